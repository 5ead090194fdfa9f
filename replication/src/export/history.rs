//! The history export: one row per change, in revision order.

use super::{
    export_error, write_manifest, ExportReport, FORMAT_VERSION, META_EXPORT, META_FROM, META_TO,
    META_VERSION,
};
use crate::state_machine::history::{self, ChangeAt, ChangeKind, Compacted, Scan};
use arrow_array::builder::{
    BinaryBuilder, StringDictionaryBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow_array::types::Int8Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use ferry_engine::columnar::{
    ContentChecksum, ExportManifest, ExportOptions, PartSink, PartWriter,
};
use ferry_engine::Snapshot;
use std::io;
use std::sync::Arc;

pub(crate) const KIND: &str = "history";

/// Bytes of changes read from the change log per page.
const PAGE_BYTES: usize = 1 << 20;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("revision", DataType::UInt64, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("key", DataType::Binary, false),
        Field::new(
            "op",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new("value", DataType::Binary, true),
        Field::new("prev_revision", DataType::UInt64, false),
    ]))
}

struct Rows {
    revision: UInt64Builder,
    time: TimestampMillisecondBuilder,
    key: BinaryBuilder,
    op: StringDictionaryBuilder<Int8Type>,
    value: BinaryBuilder,
    prev: UInt64Builder,
    bytes: usize,
}

impl Rows {
    fn new() -> Rows {
        Rows {
            revision: UInt64Builder::new(),
            time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            key: BinaryBuilder::new(),
            op: StringDictionaryBuilder::new(),
            value: BinaryBuilder::new(),
            prev: UInt64Builder::new(),
            bytes: 0,
        }
    }

    fn flush<S: PartSink>(&mut self, writer: &mut PartWriter<S>) -> io::Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.revision.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.op.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.prev.finish()),
        ];
        let batch = RecordBatch::try_new(writer.schema().clone(), columns).map_err(export_error)?;
        writer.write(&batch).map_err(export_error)?;
        self.bytes = 0;
        Ok(())
    }
}

/// Exports every change of revisions `from..=to` of `view` (0s: from the
/// compacted revision, to the latest) into `sink`, parts then `EXPORT`.
/// Fails with [`Compacted`] if `from` is below the compacted revision.
pub fn export<S: PartSink>(
    view: &Snapshot,
    from: u64,
    to: u64,
    options: &ExportOptions,
    sink: S,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(ExportReport, S)> {
    let compacted = history::compacted(view)?;
    let applied = crate::state_machine::applied_index(view)?;
    let from = if from == 0 { compacted.max(1) } else { from };
    let to = if to == 0 { applied } else { to.min(applied) };
    if from < compacted {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            Compacted {
                requested: from,
                compacted,
            },
        ));
    }
    let metadata = vec![
        (META_EXPORT.to_owned(), KIND.to_owned()),
        (META_VERSION.to_owned(), FORMAT_VERSION.to_owned()),
        (META_FROM.to_owned(), from.to_string()),
        (META_TO.to_owned(), to.to_string()),
    ];
    let mut writer = PartWriter::new(schema(), options, metadata, sink).map_err(export_error)?;
    let mut rows = Rows::new();
    let mut total = ContentChecksum::new();
    let mut next = ChangeAt::revision(from);
    while next.revision <= to {
        let page = history::scan_changes(view, &Scan::new(next, to, &|_| true, PAGE_BYTES))?;
        for change in page.changes {
            let id = [
                change.revision.to_be_bytes().as_slice(),
                &change.index.to_be_bytes(),
            ]
            .concat();
            let encoded = change.encode();
            total.add(&id, &encoded);
            writer.checksum(&id, &encoded);
            rows.revision.append_value(change.revision);
            rows.time.append_value(change.time_ms as i64);
            rows.key.append_value(&change.key);
            rows.prev.append_value(change.prev_revision);
            match change.kind {
                ChangeKind::Put => {
                    rows.op.append_value("put");
                    rows.value.append_value(&change.value);
                }
                ChangeKind::Delete => {
                    rows.op.append_value("delete");
                    rows.value.append_null();
                }
            }
            rows.bytes += change.size();
        }
        if rows.bytes >= options.batch_bytes {
            rows.flush(&mut writer)?;
        }
        progress(total.rows());
        next = page.next;
        if !page.more {
            break;
        }
    }
    rows.flush(&mut writer)?;
    let (parts, bytes, mut sink) = writer.finish().map_err(export_error)?;
    let manifest = ExportManifest {
        sequence: to,
        rows: total.rows(),
        checksum: total.value(),
        parts,
    };
    write_manifest(&mut sink, &manifest)?;
    progress(total.rows());
    Ok((ExportReport { manifest, bytes }, sink))
}
