//! Parquet export of a snapshot and bulk import (see [`crate::columnar`]).

use super::{Db, Snapshot};
use crate::checkpoint::Progress;
use crate::columnar::export::export;
use crate::columnar::import::{load, read_manifest};
use crate::columnar::{ContentChecksum, ExportOptions, ExportReport, ImportReport};
use crate::{Options, Result};
use std::path::Path;

impl Db {
    /// Writes the state of `snapshot` as Parquet files into `dir` (which
    /// must not exist), streaming: memory stays within the budget described
    /// on [`ExportOptions`] whatever the database size.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
    /// db.put(b"a", b"1")?;
    /// let snapshot = db.snapshot();
    /// let report = db.export_parquet(&snapshot, dir.path().join("export"), &Default::default(), &mut |_| {})?;
    /// assert_eq!(report.manifest.rows, 1);
    /// assert_eq!(report.manifest.checksum, snapshot.content_checksum()?);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn export_parquet(
        &self,
        snapshot: &Snapshot,
        dir: impl AsRef<Path>,
        options: &ExportOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ExportReport> {
        let hint = self.statistics().level_bytes.iter().sum();
        export(
            &*self.inner.fs,
            snapshot.iter(),
            snapshot.sequence(),
            dir.as_ref(),
            options,
            hint,
            progress,
        )
    }

    /// Bulk-loads a Parquet export into this database, which must be empty.
    /// Rows become tables of the bottom level directly (no WAL, no per-key
    /// writes); every row, each file's and the export's checksums are
    /// checked before anything becomes visible, so a damaged export changes
    /// nothing. Afterwards the database reads at the export's sequence.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let source = ferry_engine::Db::open(dir.path().join("a"), Default::default())?;
    /// source.put(b"k", b"v")?;
    /// source.export_parquet(&source.snapshot(), dir.path().join("export"), &Default::default(), &mut |_| {})?;
    /// let target = ferry_engine::Db::open(dir.path().join("b"), Default::default())?;
    /// let report = target.import_parquet(dir.path().join("export"), &mut |_| {})?;
    /// assert_eq!(report.rows, 1);
    /// assert_eq!(target.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn import_parquet(
        &self,
        dir: impl AsRef<Path>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImportReport> {
        self.import(dir.as_ref(), progress)
    }
}

impl Snapshot {
    /// The content checksum of everything the snapshot sees (the same
    /// function a Parquet export records; see [`crate::columnar`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = ferry_engine::Db::open(dir.path(), Default::default())?;
    /// let empty = db.snapshot().content_checksum()?;
    /// db.put(b"k", b"v")?;
    /// assert_ne!(db.snapshot().content_checksum()?, empty);
    /// # Ok::<(), ferry_engine::Error>(())
    /// ```
    pub fn content_checksum(&self) -> Result<u64> {
        let mut checksum = ContentChecksum::new();
        for entry in self.iter() {
            let (key, value) = entry?;
            checksum.add(&key, &value);
        }
        Ok(checksum.value())
    }
}

impl Db {
    fn import(&self, dir: &Path, progress: &mut dyn FnMut(Progress)) -> Result<ImportReport> {
        let fs = self.inner.fs.clone();
        let manifest = read_manifest(&*fs, dir)?;
        let mut loaded = None;
        let bulk = self.bulk_load(manifest.sequence, |loader| {
            loaded = Some(load(&*fs, dir, loader, progress)?);
            Ok(())
        })?;
        let manifest = loaded.expect("the load ran");
        debug_assert_eq!(bulk.checksum, manifest.checksum);
        Ok(ImportReport {
            rows: manifest.rows,
            checksum: manifest.checksum,
            sequence: manifest.sequence,
            tables: bulk.tables,
            table_bytes: bulk.table_bytes,
        })
    }
}

/// Builds a new database at `target` from a Parquet export: the database is
/// created and loaded in a staging directory, closed, and switched in by
/// rename, so a failed or interrupted restore leaves `target` as it was.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let db = ferry_engine::Db::open(dir.path().join("db"), Default::default())?;
/// db.put(b"k", b"v")?;
/// db.export_parquet(&db.snapshot(), dir.path().join("export"), &Default::default(), &mut |_| {})?;
/// ferry_engine::columnar::restore_parquet(&dir.path().join("export"), &dir.path().join("restored"), Default::default(), &mut |_| {})?;
/// let restored = ferry_engine::Db::open(dir.path().join("restored"), Default::default())?;
/// assert_eq!(restored.get(b"k")?.as_deref(), Some(&b"v"[..]));
/// # Ok::<(), ferry_engine::Error>(())
/// ```
pub fn restore_parquet(
    export_dir: &Path,
    target: &Path,
    options: Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImportReport> {
    let fs = options.fs.clone();
    crate::checkpoint::build_and_switch(&*fs, target, |staging| {
        let db = Db::open(staging, options.clone())?;
        let report = db.import_parquet(export_dir, progress)?;
        db.close()?;
        Ok(report)
    })
}
