//! A new single-node cluster from a state export: its rows are checked
//! and bulk-loaded into a fresh engine (no Raft, no per-key writes), with
//! the system records a replica's state needs, then the directory is made
//! a cluster of its own as `crate::recovery` does for snapshots.
//!
//! The new cluster's history starts after the export's revision (the
//! export holds no history), so reads at that revision are served and
//! watches start after it.

use super::state::KIND;
use super::{
    FORMAT_VERSION, META_APPLIED, META_DRAINING, META_EXPORT, META_LEASES, META_REVISION,
    META_TIME, META_VERSION,
};
use crate::recovery::{aside, engine_options, make_single_node, move_into_place, Recovered};
use crate::state_machine::keys::{self, Record};
use crate::types::{FerryNode, LogId, NodeId};
use arrow_array::{Array, BinaryArray, RecordBatch, UInt64Array};
use ferry_engine::columnar::{
    read_manifest, ContentChecksum, PartReader, META_CHECKSUM, META_ROWS,
};
use ferry_engine::fs::FileSystem;
use ferry_engine::{BulkLoader, Db};
use std::io;
use std::path::Path;
use std::sync::Arc;

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

/// Builds `data_dir` (which must not exist) on `fs` as node `id` of a new
/// single-node cluster holding the state export in `export_dir`.
pub async fn from_state_export(
    fs: &Arc<dyn FileSystem>,
    export_dir: &Path,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
    progress: &mut (dyn FnMut(u64) + Send),
) -> io::Result<RestoreReport> {
    let staged = aside(&**fs, data_dir, "parquet")?;
    let result = async {
        let (rows, revision, checksum) = load(fs, export_dir, &staged.join("engine-0"), progress)?;
        let recovered = make_single_node(fs, &staged, id, node).await?;
        move_into_place(&**fs, &staged, data_dir)?;
        Ok(RestoreReport {
            rows,
            revision,
            checksum,
            recovered,
        })
    }
    .await;
    if result.is_err() {
        let _ = fs.remove_dir_all(&staged);
    }
    result
}

/// Builds `data_dir` (which must not exist) as node `id` of a new
/// single-node cluster holding `rows` (user keys in strictly increasing
/// order, with their values), all created at revision 1: an initial
/// import through the bulk loader, with no Raft and no per-key writes.
pub async fn from_rows(
    fs: &Arc<dyn FileSystem>,
    data_dir: &Path,
    id: NodeId,
    node: FerryNode,
    rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> io::Result<RestoreReport> {
    let staged = aside(&**fs, data_dir, "import")?;
    let result = async {
        let applied = crate::types::log_id(1, id, 1);
        let db = Db::open(staged.join("engine-0"), engine_options(fs)).map_err(io::Error::other)?;
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
        let recovered = make_single_node(fs, &staged, id, node).await?;
        move_into_place(&**fs, &staged, data_dir)?;
        Ok(RestoreReport {
            rows: total.rows(),
            revision: 1,
            checksum: total.value(),
            recovered,
        })
    }
    .await;
    if result.is_err() {
        let _ = fs.remove_dir_all(&staged);
    }
    result
}

/// Loads the export into a new engine at `engine_dir`; returns its rows,
/// revision and checksum.
fn load(
    fs_arc: &Arc<dyn FileSystem>,
    export_dir: &Path,
    engine_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(u64, u64, u64)> {
    let fs = &**fs_arc;
    let manifest = read_manifest(fs, export_dir).map_err(io::Error::other)?;
    let mut applied = None;
    let mut time_ms = 0;
    // The leases the export names, and whether a row is on one.
    let mut leases: Vec<(u64, u64)> = Vec::new();
    let mut draining: Vec<u64> = Vec::new();
    let mut leased_rows = false;
    let db = Db::open(engine_dir, engine_options(fs_arc)).map_err(io::Error::other)?;
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
                    if let Some(json) = meta(META_LEASES) {
                        leases = serde_json::from_str(&json).map_err(|_| {
                            reader.corrupt("the leases in the metadata do not decode")
                        })?;
                    }
                    if let Some(json) = meta(META_DRAINING) {
                        draining = serde_json::from_str(&json).map_err(|_| {
                            reader.corrupt("the draining leases in the metadata do not decode")
                        })?;
                    }
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
                        leased_rows |= record.lease != 0;
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
    restore_leases(&db, &leases, &draining, leased_rows)?;
    db.close().map_err(io::Error::other)?;
    Ok((total.rows(), applied.index, total.value()))
}

/// TTL of a lease a restored key names that the export does not list (an
/// export of an earlier release listed none).
pub const RESTORED_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes the lease records of `leases` (`(id, ttl_ms)`) and, when a row is
/// on a lease, the leases' key indexes, after the bulk load: each lease
/// starts its whole TTL when the restored cluster starts, and its keys go
/// with it, as in the cluster exported. A lease a key names that the
/// export does not list gets [`RESTORED_LEASE_TTL`]. Reads the restored
/// user state back in key order and writes in bounded batches.
fn restore_leases(
    db: &Db,
    leases: &[(u64, u64)],
    draining: &[u64],
    leased_rows: bool,
) -> io::Result<()> {
    use crate::lease::{store, LeaseRecord};
    use std::collections::BTreeSet;
    const BATCH_OPS: usize = 4096;
    let write = |batch: &mut ferry_engine::WriteBatch| -> io::Result<()> {
        if !batch.is_empty() {
            db.write(std::mem::take(batch)).map_err(io::Error::other)?;
        }
        Ok(())
    };
    let record = |ttl_ms| {
        store::encode(&LeaseRecord {
            ttl_ms,
            remaining_ms: None,
        })
    };
    let mut batch = ferry_engine::WriteBatch::new();
    let mut listed = BTreeSet::new();
    for &(id, ttl_ms) in leases {
        if id == 0 || !listed.insert(id) {
            return Err(invalid(format!(
                "the export lists lease {id} twice or as 0"
            )));
        }
        batch.put(store::record_key(id), record(ttl_ms));
        if batch.len() >= BATCH_OPS {
            write(&mut batch)?;
        }
    }
    // Revoked leases whose keys were still being deleted: their keys stay
    // attached, with no record, and the restored leader goes on deleting.
    for &id in draining {
        if id == 0 || !listed.insert(id) {
            return Err(invalid(format!(
                "the export lists lease {id} as draining and as a lease, twice, or as 0"
            )));
        }
        batch.put(store::drain_key(id), []);
    }
    if leased_rows {
        let mut unlisted = BTreeSet::new();
        let (from, to) = keys::user_bounds(&[], None);
        for item in db.snapshot().range(from..to) {
            let (engine_key, value) = item.map_err(io::Error::other)?;
            let key = &engine_key[1..];
            let lease = Record::decode(&value)
                .ok_or_else(|| keys::undecodable("record", key))?
                .lease;
            if lease == 0 {
                continue;
            }
            if !listed.contains(&lease) && unlisted.insert(lease) {
                // Named by a key only: an export of an earlier release.
                batch.put(
                    store::record_key(lease),
                    record(RESTORED_LEASE_TTL.as_millis() as u64),
                );
            }
            batch.put(store::index_key(lease, key), []);
            if batch.len() >= BATCH_OPS {
                write(&mut batch)?;
            }
        }
    }
    write(&mut batch)
}

fn add_user_row(
    loader: &mut BulkLoader<'_>,
    key: &[u8],
    stored: &[u8],
) -> ferry_engine::Result<()> {
    loader.add(&keys::user_key(key), stored, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lease::{store, LeaseCommand};
    use crate::types::{Command, Entry, Op, Txn};
    use ferry_engine::columnar::{DirSink, ExportOptions};
    use openraft::entry::RaftEntry;

    fn entry(index: u64, command: Command) -> Entry {
        Entry::new_normal(crate::types::log_id(1, 1, index), command.into())
    }

    #[test]
    fn a_restored_state_keeps_its_leases_and_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let source = Db::open(dir.path().join("source"), Default::default()).unwrap();
        let leased = |key: &str| Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease: 7,
            prev_kv: false,
        };
        let entries = [
            entry(
                1,
                Command::Lease(LeaseCommand::Grant {
                    id: 7,
                    ttl_ms: 30_000,
                }),
            ),
            entry(
                2,
                Command::Lease(LeaseCommand::Grant {
                    id: 8,
                    ttl_ms: 5_000,
                }),
            ),
            entry(
                3,
                Command::Txn(Txn::batch(vec![
                    leased("lock/a"),
                    Op::put("plain", "v"),
                    leased("lock/b"),
                ])),
            ),
        ];
        crate::state_machine::apply::apply_and_write(&source, &entries, |_, _| Ok(())).unwrap();
        // Lease 9 revoked with a key still to delete, as a drain leaves it.
        let draining = Record {
            create_revision: 3,
            mod_revision: 3,
            version: 1,
            lease: 9,
            mod_index: 9,
            value: b"v".to_vec(),
        };
        source
            .put(keys::user_key(b"drained/later"), draining.encode())
            .unwrap();
        source
            .put(store::index_key(9, b"drained/later"), [])
            .unwrap();
        source.put(store::drain_key(9), []).unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir(&export).unwrap();
        super::super::state::export(
            &source.snapshot(),
            &ExportOptions::default(),
            DirSink::new(&ferry_engine::fs::OsFs, &export),
            &mut |_| {},
        )
        .unwrap();
        let restored = dir.path().join("restored");
        load(
            &ferry_engine::fs::OsFs::shared(),
            &export,
            &restored,
            &mut |_| {},
        )
        .unwrap();
        let db = Db::open(&restored, Default::default()).unwrap();
        let view = db.snapshot();
        let ttls: Vec<(u64, u64)> = store::all(&view)
            .unwrap()
            .into_iter()
            .map(|(id, record)| (id, record.ttl_ms))
            .collect();
        assert_eq!(ttls, [(7, 30_000), (8, 5_000)]);
        for key in ["lock/a", "lock/b"] {
            assert!(view
                .get(store::index_key(7, key.as_bytes()))
                .unwrap()
                .is_some());
        }
        assert!(view.get(store::index_key(7, b"plain")).unwrap().is_none());
        // A draining lease stays one: no record, its key attached, marked.
        assert!(store::get(&view, 9).unwrap().is_none());
        assert_eq!(store::draining(&view).unwrap(), [9]);
        assert!(view
            .get(store::index_key(9, b"drained/later"))
            .unwrap()
            .is_some());
        // A lease a key names that the export does not list gets the
        // restore's TTL.
        let other = Db::open(dir.path().join("other"), Default::default()).unwrap();
        let record = Record {
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 9,
            mod_index: 0,
            value: b"v".to_vec(),
        };
        other.put(keys::user_key(b"k"), record.encode()).unwrap();
        restore_leases(&other, &[], &[], true).unwrap();
        let view = other.snapshot();
        assert_eq!(
            store::get(&view, 9).unwrap().unwrap().ttl_ms,
            RESTORED_LEASE_TTL.as_millis() as u64
        );
        assert!(view.get(store::index_key(9, b"k")).unwrap().is_some());
    }

    #[test]
    fn an_export_of_an_empty_state_restores() {
        let dir = tempfile::tempdir().unwrap();
        let source = Db::open(dir.path().join("source"), Default::default()).unwrap();
        let entries = [
            entry(1, Command::Txn(Txn::batch(vec![Op::put("k", "v")]))),
            entry(2, Command::Txn(Txn::batch(vec![Op::delete("k")]))),
        ];
        crate::state_machine::apply::apply_and_write(&source, &entries, |_, _| Ok(())).unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir(&export).unwrap();
        let (report, _) = super::super::state::export(
            &source.snapshot(),
            &ExportOptions::default(),
            DirSink::new(&ferry_engine::fs::OsFs, &export),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((report.manifest.rows, report.manifest.parts.len()), (0, 1));
        let (rows, revision, _) = load(
            &ferry_engine::fs::OsFs::shared(),
            &export,
            &dir.path().join("restored"),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((rows, revision), (0, 2));
    }
}
