//! The manifest: the durable record of which tables are live.
//!
//! The manifest is a log (same framing as the WAL, [`LogKind::Manifest`])
//! of [`edit::VersionEdit`]s. A table becomes part of the database only when
//! an edit naming it has been synced; WAL segments and obsolete tables are
//! deleted only after the edit that retires them is durable. `CURRENT`
//! names the live manifest and is replaced atomically (write, fsync,
//! rename, fsync directory).
//!
//! On every open the manifest is rewritten as one edit describing the whole
//! state, so it never grows without bound across restarts; while running it
//! is rolled the same way once it passes [`MANIFEST_ROLL_BYTES`].

pub(crate) mod edit;
pub(crate) mod version;

use crate::cache::BlockCache;
use crate::error::IoContext;
use crate::fs::FileSystem;
use crate::sst::table::Table;
use crate::sst::table_path;
use crate::stats::Counters;
use crate::wal::{read_segment, LogKind, LogWriter, TailPolicy};
use crate::{Error, Result};
use edit::{TableMeta, VersionEdit};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use version::{TableFile, Version};

const CURRENT: &str = "CURRENT";
/// Size past which the manifest is rewritten as a single snapshot edit.
pub(crate) const MANIFEST_ROLL_BYTES: u64 = 64 << 20;

pub(crate) fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// The live version plus the persistent counters that go with it.
pub(crate) struct VersionSet {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    cache: Arc<BlockCache>,
    counters: Arc<Counters>,
    current: Arc<Version>,
    manifest: LogWriter,
    manifest_number: u64,
    edit_count: u64,
    /// First WAL segment still needed by recovery.
    pub(crate) log_number: u64,
    /// Highest sequence held by tables.
    pub(crate) last_sequence: u64,
    /// Set when a manifest write failed; no edit is accepted afterwards.
    poisoned: Option<String>,
    /// Size past which the manifest is rolled ([`MANIFEST_ROLL_BYTES`];
    /// tests make it small).
    roll_bytes: u64,
}

/// What recovery of the manifest found.
pub(crate) struct Recovered {
    pub(crate) version: Version,
    pub(crate) log_number: u64,
    pub(crate) next_file_number: u64,
    pub(crate) last_sequence: u64,
}

impl VersionSet {
    /// Whether `dir` holds a database.
    pub(crate) fn exists(fs: &dyn FileSystem, dir: &Path) -> bool {
        fs.exists(&dir.join(CURRENT))
    }

    /// Replays the manifest named by `CURRENT`.
    pub(crate) fn recover(
        fs: &Arc<dyn FileSystem>,
        dir: &Path,
        cache: &Arc<BlockCache>,
        counters: &Arc<Counters>,
    ) -> Result<Recovered> {
        let current_path = dir.join(CURRENT);
        let current = fs.read_all(&current_path).at(&current_path)?;
        let name = std::str::from_utf8(&current)
            .ok()
            .map(str::trim)
            .filter(|n| n.starts_with("MANIFEST-"))
            .ok_or_else(|| {
                Error::corruption(&current_path, 0, "CURRENT does not name a manifest")
            })?;
        let number: u64 = name["MANIFEST-".len()..]
            .parse()
            .map_err(|_| Error::corruption(&current_path, 0, "CURRENT does not name a manifest"))?;
        let path = dir.join(name);
        let mut edits = Vec::new();
        let mut decode_error = None;
        // A torn last edit was never synced, so nothing acted on it.
        let outcome = read_segment(
            &**fs,
            &path,
            LogKind::Manifest,
            TailPolicy::TolerateTornTail,
            |_, payload| {
                match VersionEdit::decode(payload) {
                    Ok(edit) => edits.push(edit),
                    Err((at, reason)) => decode_error = Some((at, reason)),
                }
                if let Some((at, reason)) = &decode_error {
                    return Err(Error::corruption(&path, *at as u64, reason.clone()));
                }
                Ok(())
            },
        )?;
        // The first edit is synced before CURRENT names the manifest: it
        // cannot be torn. Taken for a torn tail, its damage would open an
        // empty database, and every table would be deleted as obsolete.
        if edits.is_empty() {
            let (at, why) = outcome.damage.unwrap_or((0, "no record".to_string()));
            return Err(Error::corruption(
                &path,
                at,
                format!(
                    "the manifest's first edit, synced before CURRENT named it, is damaged: {why}"
                ),
            ));
        }

        let mut recovered = Recovered {
            version: Version::default(),
            log_number: 0,
            next_file_number: number + 1,
            last_sequence: 0,
        };
        // Collapse the edits into the final table set before opening any
        // table: tables added and deleted again are never opened.
        let mut live: [Vec<TableMeta>; version::NUM_LEVELS] = Default::default();
        for edit in &edits {
            recovered.log_number = edit.log_number.unwrap_or(recovered.log_number);
            if let Some(next) = edit.next_file_number {
                recovered.next_file_number = recovered.next_file_number.max(next);
            }
            if let Some(sequence) = edit.last_sequence {
                recovered.last_sequence = recovered.last_sequence.max(sequence);
            }
            for (level, number) in &edit.deleted {
                let files = live.get_mut(*level).ok_or_else(|| {
                    Error::corruption(&path, 0, format!("edit names level {level}"))
                })?;
                files.retain(|t| t.number != *number);
            }
            for (level, table) in &edit.added {
                live.get_mut(*level)
                    .ok_or_else(|| {
                        Error::corruption(&path, 0, format!("edit names level {level}"))
                    })?
                    .push(table.clone());
            }
        }
        let mut snapshot = VersionEdit::default();
        let mut opened = HashMap::new();
        for (level, tables) in live.into_iter().enumerate() {
            for meta in tables {
                recovered.next_file_number = recovered.next_file_number.max(meta.number + 1);
                let file = open_table(fs, dir, meta.clone(), cache, counters)?;
                opened.insert(meta.number, file);
                snapshot.added.push((level, meta));
            }
        }
        recovered.version = Version::default().apply(&snapshot, &mut opened)?;
        Ok(recovered)
    }

    /// Starts a new manifest holding `version` as one edit and points
    /// `CURRENT` at it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        cache: Arc<BlockCache>,
        counters: Arc<Counters>,
        version: Version,
        manifest_number: u64,
        log_number: u64,
        next_file_number: u64,
        last_sequence: u64,
    ) -> Result<VersionSet> {
        let manifest = write_snapshot(
            &*fs,
            dir,
            manifest_number,
            &version,
            log_number,
            next_file_number,
            last_sequence,
        )?;
        Ok(VersionSet {
            dir: dir.to_path_buf(),
            fs,
            cache,
            counters,
            current: Arc::new(version),
            manifest,
            manifest_number,
            edit_count: 1,
            log_number,
            last_sequence,
            poisoned: None,
            roll_bytes: MANIFEST_ROLL_BYTES,
        })
    }

    pub(crate) fn current(&self) -> Arc<Version> {
        self.current.clone()
    }

    pub(crate) fn manifest_number(&self) -> u64 {
        self.manifest_number
    }

    /// Opens the tables an edit adds (they must already be synced); a table
    /// that is already live (a trivial move) is shared, not reopened.
    pub(crate) fn open_added(&self, edit: &VersionEdit) -> Result<HashMap<u64, Arc<TableFile>>> {
        let mut opened = HashMap::new();
        for (_, meta) in &edit.added {
            if let Some((_, live)) = self
                .current
                .all_files()
                .find(|(_, f)| f.meta.number == meta.number)
            {
                opened.insert(meta.number, live.clone());
                continue;
            }
            let file = open_table(
                &self.fs,
                &self.dir,
                meta.clone(),
                &self.cache,
                &self.counters,
            )?;
            opened.insert(meta.number, file);
        }
        Ok(opened)
    }

    /// Makes an edit durable and installs the resulting version. Tables the
    /// edit deletes are marked obsolete: their files go away with the last
    /// version or iterator that holds them. `next_file_number` is the
    /// database's file number counter: a rolled manifest takes its number
    /// from it, and its value is recorded so a later open never reuses a
    /// number.
    pub(crate) fn log_and_apply(
        &mut self,
        mut edit: VersionEdit,
        mut opened: HashMap<u64, Arc<TableFile>>,
        next_file_number: &AtomicU64,
    ) -> Result<Arc<Version>> {
        if let Some(reason) = &self.poisoned {
            return Err(Error::Background(format!(
                "an earlier manifest write failed: {reason}"
            )));
        }
        let next = self.current.apply(&edit, &mut opened)?;
        // The new counters take effect only once the edit is durable.
        let log_number = edit.log_number.unwrap_or(self.log_number);
        debug_assert!(log_number >= self.log_number, "log number went backwards");
        let last_sequence = self.last_sequence.max(edit.last_sequence.unwrap_or(0));
        let written = if self.manifest.len() > self.roll_bytes {
            // Allocated, not just read: two rolls with no file made between
            // them would otherwise both take the live manifest's number,
            // and the second would truncate, then delete it.
            let number = next_file_number.fetch_add(1, Ordering::SeqCst);
            debug_assert_ne!(number, self.manifest_number);
            write_snapshot(
                &*self.fs,
                &self.dir,
                number,
                &next,
                log_number,
                next_file_number.load(Ordering::SeqCst),
                last_sequence,
            )
            .map(|manifest| {
                let old = std::mem::replace(&mut self.manifest_number, number);
                self.manifest = manifest;
                let _ = self.fs.remove_file(&self.dir.join(manifest_name(old)));
            })
        } else {
            edit.next_file_number = Some(next_file_number.load(Ordering::SeqCst));
            self.edit_count += 1;
            let manifest = &mut self.manifest;
            manifest
                .append(self.edit_count, &edit.encode())
                .and_then(|()| manifest.sync())
        };
        if let Err(error) = written {
            // The manifest may now end in a partial record, and its file
            // buffer in an unknown state: refuse every later edit, so that
            // nothing is ever appended after the damage or acted on as if it
            // were durable. A reopen recovers from what is on disk.
            self.poisoned = Some(error.to_string());
            return Err(error);
        }
        self.log_number = log_number;
        self.last_sequence = last_sequence;
        for (level, number) in &edit.deleted {
            // A trivial move deletes and re-adds the same table.
            if edit.added.iter().any(|(_, meta)| meta.number == *number) {
                continue;
            }
            if let Some(file) = self.current.levels[*level]
                .iter()
                .find(|f| f.meta.number == *number)
            {
                file.mark_obsolete();
            }
        }
        self.current = Arc::new(next);
        Ok(self.current.clone())
    }
}

fn open_table(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    meta: TableMeta,
    cache: &Arc<BlockCache>,
    counters: &Arc<Counters>,
) -> Result<Arc<TableFile>> {
    let path = table_path(dir, meta.number);
    let size = fs.file_size(&path).at(&path)?;
    if size != meta.size {
        return Err(Error::corruption(
            &path,
            size,
            format!("table is {size} bytes, manifest says {}", meta.size),
        ));
    }
    let table = Table::open(&**fs, &path, meta.number, cache.clone(), counters.clone())?;
    // Pair check: what the table says about itself must match what the
    // manifest recorded when it was written.
    let properties = table.properties();
    if properties.smallest != meta.smallest || properties.largest != meta.largest {
        return Err(Error::corruption(
            &path,
            0,
            "table key range differs from the manifest",
        ));
    }
    Ok(Arc::new(TableFile::new(meta, Arc::new(table), fs.clone())))
}

/// Writes a manifest holding the whole state as one edit, syncs it and
/// switches `CURRENT` to it.
pub(crate) fn write_snapshot(
    fs: &dyn FileSystem,
    dir: &Path,
    number: u64,
    version: &Version,
    log_number: u64,
    next_file_number: u64,
    last_sequence: u64,
) -> Result<LogWriter> {
    let mut edit = VersionEdit {
        log_number: Some(log_number),
        next_file_number: Some(next_file_number.max(number + 1)),
        last_sequence: Some(last_sequence),
        ..VersionEdit::default()
    };
    for (level, file) in version.all_files() {
        edit.added.push((level, file.meta.clone()));
    }
    let path = dir.join(manifest_name(number));
    let mut writer = LogWriter::create(fs, &path, LogKind::Manifest)?;
    writer.append(1, &edit.encode())?;
    writer.sync()?;
    fs.sync_dir(dir).at(dir)?;
    let current = dir.join(CURRENT);
    fs.write_atomic(&current, format!("{}\n", manifest_name(number)).as_bytes())
        .at(&current)?;
    Ok(writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::OsFs;

    /// Two rolls with no file made between them: each takes a number of
    /// its own (the second once took the live manifest's, truncated it,
    /// then deleted it), and the database's manifest recovers.
    #[test]
    fn rolls_in_a_row_each_take_a_new_number() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn FileSystem> = Arc::new(OsFs);
        let cache = Arc::new(BlockCache::new(1 << 20));
        let counters = Arc::new(Counters::default());
        let counter = AtomicU64::new(10);
        let mut set = VersionSet::create(
            fs.clone(),
            dir.path(),
            cache.clone(),
            counters.clone(),
            Version::default(),
            1,
            0,
            counter.load(Ordering::SeqCst),
            0,
        )
        .unwrap();
        set.roll_bytes = 0;
        let mut numbers = vec![set.manifest_number()];
        for sequence in 1..=3 {
            let edit = VersionEdit {
                last_sequence: Some(sequence),
                ..VersionEdit::default()
            };
            set.log_and_apply(edit, HashMap::new(), &counter).unwrap();
            numbers.push(set.manifest_number());
        }
        let mut distinct = numbers.clone();
        distinct.dedup();
        assert_eq!(distinct, numbers, "a roll reused a number: {numbers:?}");
        let recovered = VersionSet::recover(&fs, dir.path(), &cache, &counters).unwrap();
        assert_eq!(recovered.last_sequence, 3);
        assert!(recovered.next_file_number > *numbers.last().unwrap());
    }
}
