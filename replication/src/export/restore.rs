//! A new single-node cluster from a state export: its rows are checked
//! and bulk-loaded into a fresh engine (no Raft, no per-key writes), with
//! the system records a replica's state needs, then the directory is made
//! a cluster of its own as `crate::recovery` does for snapshots.
//!
//! The new cluster's history starts after the export's revision (the
//! export holds no history), so reads at that revision are served and
//! watches start after it.

use super::state::KIND;
use super::{FORMAT_VERSION, META_APPLIED, META_EXPORT, META_REVISION, META_TIME, META_VERSION};
use crate::recovery::{aside, make_single_node, move_into_place, Recovered};
use crate::state_machine::keys::{self, Record};
use crate::types::{FerryNode, LogId, NodeId};
use arrow_array::{Array, BinaryArray, RecordBatch, UInt64Array};
use ferry_engine::columnar::{
    read_manifest, ContentChecksum, PartReader, META_CHECKSUM, META_ROWS,
};
use ferry_engine::fs::{FileSystem, OsFs};
use ferry_engine::{BulkLoader, Db};
use std::io;
use std::path::Path;

/// What a restore from a state export loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// User keys loaded.
    pub rows: u64,
    /// The export's revision: the new cluster starts after it.
    pub revision: u64,
    /// The content checksum of the loaded user state (the export's).
    pub checksum: u64,
    pub recovered: Recovered,
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// The state export's columns, checked for names and types.
struct Columns<'a> {
    key: &'a BinaryArray,
    value: &'a BinaryArray,
    create: &'a UInt64Array,
    modified: &'a UInt64Array,
    version: &'a UInt64Array,
    lease: &'a UInt64Array,
}

fn columns(batch: &RecordBatch) -> Result<Columns<'_>, String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .filter(|c| c.null_count() == 0)
            .ok_or_else(|| format!("column {name} is missing or has nulls"))
    };
    let binary = |name: &str| {
        column(name)?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| format!("column {name} is not binary"))
    };
    let number = |name: &str| {
        column(name)?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| format!("column {name} is not uint64"))
    };
    Ok(Columns {
        key: binary("key")?,
        value: binary("value")?,
        create: number("create_revision")?,
        modified: number("mod_revision")?,
        version: number("version")?,
        lease: number("lease")?,
    })
}

/// The system records of the restored state, in key order (the
/// membership is written by `make_single_node`).
fn system_rows(applied: LogId, time_ms: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let encode = |bytes: Result<Vec<u8>, postcard::Error>| bytes.map_err(io::Error::other);
    let mut rows = vec![
        (
            keys::APPLIED.to_vec(),
            encode(postcard::to_stdvec(&Some(applied)))?,
        ),
        (
            keys::COMPACTED.to_vec(),
            (applied.index + 1).to_le_bytes().to_vec(),
        ),
        (keys::LAYOUT.to_vec(), vec![keys::LAYOUT_VERSION]),
        (keys::TIME.to_vec(), encode(postcard::to_stdvec(&time_ms))?),
    ];
    rows.sort();
    Ok(rows)
}

/// Builds `data_dir` (which must not exist) as node `id` of a new
/// single-node cluster holding the state export in `export_dir`.
pub async fn from_state_export(
    export_dir: &Path,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
    progress: &mut (dyn FnMut(u64) + Send),
) -> io::Result<RestoreReport> {
    let staged = aside(data_dir, "parquet")?;
    let result = async {
        let (rows, revision, checksum) = load(export_dir, &staged.join("engine-0"), progress)?;
        let recovered = make_single_node(&staged, id, node).await?;
        move_into_place(&staged, data_dir)?;
        Ok(RestoreReport {
            rows,
            revision,
            checksum,
            recovered,
        })
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    result
}

/// Builds `data_dir` (which must not exist) as node `id` of a new
/// single-node cluster holding `rows` (user keys in strictly increasing
/// order, with their values), all created at revision 1: an initial
/// import through the bulk loader, with no Raft and no per-key writes.
pub async fn from_rows(
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
    rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> io::Result<RestoreReport> {
    let staged = aside(data_dir, "import")?;
    let result = async {
        let applied = crate::types::log_id(1, id, 1);
        let db = Db::open(staged.join("engine-0"), ferry_engine::Options::default())
            .map_err(io::Error::other)?;
        let mut total = ContentChecksum::new();
        let system = system_rows(applied, crate::types::now_ms())?;
        db.bulk_load(1, |loader| {
            for (key, value) in system {
                loader.add(&key, &value, 1)?;
            }
            let mut previous: Option<Vec<u8>> = None;
            for (key, value) in rows {
                if previous.as_ref().is_some_and(|p| *p >= key) || key.is_empty() {
                    return Err(ferry_engine::Error::InvalidOptions(
                        "import rows must have non-empty keys in strictly increasing order".into(),
                    ));
                }
                let record = Record {
                    create_revision: 1,
                    mod_revision: 1,
                    version: 1,
                    lease: 0,
                    mod_index: 0,
                    value,
                };
                total.add(&key, &record.state_bytes());
                add_user_row(loader, &key, &record.encode())?;
                previous = Some(key);
            }
            Ok(())
        })
        .map_err(io::Error::other)?;
        db.close().map_err(io::Error::other)?;
        let recovered = make_single_node(&staged, id, node).await?;
        move_into_place(&staged, data_dir)?;
        Ok(RestoreReport {
            rows: total.rows(),
            revision: 1,
            checksum: total.value(),
            recovered,
        })
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    result
}

/// Loads the export into a new engine at `engine_dir`; returns its rows,
/// revision and checksum.
fn load(
    export_dir: &Path,
    engine_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(u64, u64, u64)> {
    let fs = &OsFs as &dyn FileSystem;
    let manifest = read_manifest(fs, export_dir).map_err(io::Error::other)?;
    let mut applied = None;
    let mut time_ms = 0;
    let db = Db::open(engine_dir, ferry_engine::Options::default()).map_err(io::Error::other)?;
    let mut total = ContentChecksum::new();
    let bulk = db
        .bulk_load(1, |loader| {
            for (at, part) in manifest.parts.iter().enumerate() {
                let mut reader = PartReader::open(fs, &export_dir.join(&part.name))?;
                let meta = |key: &str| reader.metadata(key).map(str::to_owned);
                if meta(META_EXPORT).as_deref() != Some(KIND)
                    || meta(META_VERSION).as_deref() != Some(FORMAT_VERSION)
                {
                    return Err(
                        reader.corrupt(format!("not a version-{FORMAT_VERSION} state export"))
                    );
                }
                if meta(META_REVISION) != Some(manifest.sequence.to_string())
                    || meta(META_ROWS) != Some(part.rows.to_string())
                    || meta(META_CHECKSUM) != Some(format!("{:016x}", part.checksum))
                {
                    return Err(reader.corrupt("file metadata does not match the EXPORT file"));
                }
                if at == 0 {
                    let log_id: Option<LogId> = meta(META_APPLIED)
                        .and_then(|json| serde_json::from_str(&json).ok())
                        .ok_or_else(|| reader.corrupt("no applied log id in the metadata"))?;
                    let log_id =
                        log_id.ok_or_else(|| reader.corrupt("the export is of an empty state"))?;
                    if log_id.index != manifest.sequence {
                        return Err(reader.corrupt("applied log id and revision differ"));
                    }
                    time_ms = meta(META_TIME).and_then(|t| t.parse().ok()).unwrap_or(0);
                    applied = Some(log_id);
                    // System records first: they sort before every user key.
                    for (key, value) in
                        system_rows(log_id, time_ms).map_err(|e| reader.corrupt(e.to_string()))?
                    {
                        loader.add(&key, &value, 1)?;
                    }
                }
                let mut checksum = ContentChecksum::new();
                while let Some(batch) = reader.next_batch()? {
                    let columns = columns(&batch).map_err(|reason| reader.corrupt(reason))?;
                    for row in 0..batch.num_rows() {
                        let key = columns.key.value(row);
                        let record = Record {
                            create_revision: columns.create.value(row),
                            mod_revision: columns.modified.value(row),
                            version: columns.version.value(row),
                            lease: columns.lease.value(row),
                            mod_index: 0,
                            value: columns.value.value(row).to_vec(),
                        };
                        if record.mod_revision > manifest.sequence
                            || record.create_revision > record.mod_revision
                            || record.version == 0
                        {
                            return Err(reader.corrupt(format!(
                                "row {} has impossible revisions",
                                checksum.rows()
                            )));
                        }
                        let canonical = record.state_bytes();
                        checksum.add(key, &canonical);
                        total.add(key, &canonical);
                        add_user_row(loader, key, &record.encode()).map_err(|e| match e {
                            ferry_engine::Error::InvalidOptions(reason) => reader.corrupt(reason),
                            other => other,
                        })?;
                    }
                    progress(total.rows());
                }
                if checksum.rows() != part.rows || checksum.value() != part.checksum {
                    return Err(
                        reader.corrupt("rows or content checksum differ from the EXPORT file")
                    );
                }
            }
            Ok(())
        })
        .map_err(io::Error::other)?;
    if total.rows() != manifest.rows || total.value() != manifest.checksum {
        return Err(invalid(format!(
            "{}: total rows or content checksum differ",
            export_dir
                .join(ferry_engine::columnar::EXPORT_FILE)
                .display()
        )));
    }
    let Some(applied) = applied else {
        return Err(invalid(format!(
            "{}: an export with no part",
            export_dir.display()
        )));
    };
    debug_assert!(bulk.rows >= total.rows());
    db.close().map_err(io::Error::other)?;
    Ok((total.rows(), applied.index, total.value()))
}

fn add_user_row(
    loader: &mut BulkLoader<'_>,
    key: &[u8],
    stored: &[u8],
) -> ferry_engine::Result<()> {
    loader.add(&keys::user_key(key), stored, 1)
}
