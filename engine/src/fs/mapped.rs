//! Log segments written through a shared memory map.
//!
//! A buffered write (`Durability::Buffered` or `Periodic`) promises that a
//! record survives a process crash once the write returns, which means it
//! must be in the kernel's page cache. With `write(2)` that costs one system
//! call per write group, about a third of a single writer's time. Storing
//! into a `MAP_SHARED` mapping of the file puts the bytes in the same page
//! cache with a `memcpy`: the pages belong to the kernel, so they survive
//! the process and reach the disk on writeback or at the next `fdatasync`
//! (on Linux the page cache is unified, so `fdatasync` writes back pages
//! dirtied through a mapping like pages dirtied by `write(2)`).
//!
//! Appends collect in a user-space buffer (one write group) and go out at
//! [`WritableFile::flush`] through the map, or at [`WritableFile::sync`]
//! through `pwrite`. A group that is about to be fsynced is not stored
//! through the map: writeback write-protects every page it cleans that is
//! mapped writable, and in a multi-threaded process each such page costs a
//! TLB shoot-down on every CPU (measured: 64 group-committing `Sync`
//! writers fell from 69k to 50k writes/s). Pages written by `pwrite` are
//! not in our page tables, so they cost nothing at writeback. Both paths
//! write the same page cache; Linux keeps the two views coherent.
//!
//! Space is reserved ahead of the records by writing zeros and syncing
//! them, as PostgreSQL does for its WAL segments, window by window (see
//! [`window_at`]), in a background thread one window ahead of the writer.
//! That buys two things. A store into the map can never need a new block,
//! so a full disk is an error from the reservation, never a `SIGBUS` at a
//! random store. And an `fdatasync` after a record finds the file's size
//! and block map unchanged, so it writes only the record's pages, no
//! metadata (with `fallocate`d space, every sync also converted unwritten
//! extents, and 64 `Sync` writers ran 15% slower). The price is writing
//! the log's space twice; the zeros are sequential and off the write path.
//!
//! The file therefore runs on past its last record in zeros;
//! [`WritableFile::finish`] (and, without syncing, drop) cuts it back. A
//! crash leaves the zero tail, which readers treat as unused space (see
//! `wal::reader`).

use super::WritableFile;
use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The first window: a small log (a fresh database, a test) reserves little.
const MIN_WINDOW_BYTES: u64 = 64 << 10;
/// The largest window. Each window costs one `mmap` and one reservation,
/// so per record it is noise; larger ones would only leave a longer zero
/// tail after a crash.
const MAX_WINDOW_BYTES: u64 = 8 << 20;

/// The window holding byte `offset`, as `(start, length)`: windows double
/// from [`MIN_WINDOW_BYTES`] to [`MAX_WINDOW_BYTES`], then stay at that
/// size. Every start is a multiple of [`MIN_WINDOW_BYTES`], so it is page
/// aligned, as `mmap` requires.
fn window_at(offset: u64) -> (u64, u64) {
    if offset < MIN_WINDOW_BYTES {
        (0, MIN_WINDOW_BYTES)
    } else if offset < MAX_WINDOW_BYTES {
        let start = 1 << (63 - offset.leading_zeros());
        (start, start)
    } else {
        (offset - offset % MAX_WINDOW_BYTES, MAX_WINDOW_BYTES)
    }
}

/// Copies `source` into `target` (a mapped window) with its stores in
/// address order, so that a process killed in the middle leaves a prefix of
/// the bytes, never a later byte without an earlier one. A reader then
/// sees whole records, at most one record cut short, and zeros: a torn
/// tail. `copy_from_slice` makes no such promise: for a record-sized copy,
/// `memcpy` may store the end before the start, and a kill between the two
/// would leave a zero header followed by data, which reads as corruption.
/// Volatile stores are emitted in program order, and a killed process's
/// memory holds exactly the stores before the instruction it stopped at.
fn store_in_order(target: &mut [u8], source: &[u8]) {
    assert_eq!(target.len(), source.len(), "copy of unequal lengths");
    let base = target.as_mut_ptr();
    let mut at = 0;
    while at < source.len() && !(base as usize + at).is_multiple_of(8) {
        // SAFETY: `at < target.len()`, so the byte is inside `target`.
        unsafe { base.add(at).write_volatile(source[at]) };
        at += 1;
    }
    while at + 8 <= source.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&source[at..at + 8]);
        // SAFETY: `at + 8 <= target.len()`, so the word is inside
        // `target`, and the loop above made `base + at` 8-byte aligned
        // (it stays so: `at` grows by 8).
        unsafe {
            base.add(at)
                .cast::<u64>()
                .write_volatile(u64::from_ne_bytes(word))
        };
        at += 8;
    }
    while at < source.len() {
        // SAFETY: as in the first loop.
        unsafe { base.add(at).write_volatile(source[at]) };
        at += 1;
    }
}

/// Writes zeros over `[offset, offset + len)` and syncs them, so the range
/// is allocated, written and durable; or stops early, between 1 MiB
/// chunks, once `cancel` is set (the file is being cut back anyway).
fn zero_fill(file: &File, offset: u64, len: u64, cancel: &AtomicBool) -> io::Result<()> {
    let zeros = vec![0u8; len.min(ZERO_CHUNK_BYTES) as usize];
    let mut at = offset;
    while at < offset + len {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let take = (offset + len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..take], at)?;
        write_back(file, at, take as u64)?;
        at += take as u64;
    }
    file.sync_data()
}

/// Zeros are written in chunks of this size, each written back before the
/// next: an `fdatasync` of the log writes every dirty page of the file,
/// so megabytes of dirty zeros would be written by the next synced group,
/// not by the background thread (measured: a 3 to 8 ms stall of every
/// writer once per window).
const ZERO_CHUNK_BYTES: u64 = 256 << 10;

/// Writes `[offset, offset + len)` back to the disk and waits for it,
/// without the metadata a full sync would commit.
fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain system call on a file descriptor this `File` owns
    // for the duration of the call; no memory is passed.
    let done = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) struct MappedLogFile {
    file: File,
    /// The mapping of the window that starts at `window_start`.
    window: Option<MmapMut>,
    window_start: u64,
    /// Appended bytes not yet in the page cache; they start at `written`.
    pending: Vec<u8>,
    /// Bytes in the page cache, from the start of the file.
    written: u64,
    /// Zero-filled, synced space up to here: the file's size.
    reserved: u64,
    /// The window after `reserved` being zero-filled in the background:
    /// its end and the thread.
    ahead: Option<(u64, JoinHandle<io::Result<()>>)>,
    /// Tells the background fill to stop: set when the file is cut back,
    /// so a segment switch waits for one chunk, not a whole window.
    cancel: Arc<AtomicBool>,
}

impl MappedLogFile {
    /// Wraps a new, empty file opened for reading and writing.
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let mut mapped = MappedLogFile {
            file,
            window: None,
            window_start: 0,
            pending: Vec::new(),
            written: 0,
            reserved: 0,
            ahead: None,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        mapped.map_window(0)?;
        Ok(mapped)
    }

    /// Stores the pending bytes through the map. Whatever happens they are
    /// gone afterwards, as with plain appends: a failed group is never
    /// written again (part of it may be in the file, and its writers were
    /// told it failed); the caller treats any error as fatal for the log.
    fn store_pending(&mut self) -> io::Result<()> {
        let stored = self.store_pending_bytes();
        self.pending.clear();
        stored
    }

    fn store_pending_bytes(&mut self) -> io::Result<()> {
        let mut at = 0;
        while at < self.pending.len() {
            let inside = self.window.as_ref().is_some_and(|window| {
                self.written >= self.window_start
                    && self.written < self.window_start + window.len() as u64
            });
            if !inside {
                // `pwrite` may have carried `written` past the window.
                self.map_window(self.written)?;
            }
            let Some(window) = self.window.as_mut() else {
                return Err(io::Error::other("log window not mapped"));
            };
            let offset = (self.written - self.window_start) as usize;
            let take = (self.pending.len() - at).min(window.len() - offset);
            store_in_order(
                &mut window[offset..offset + take],
                &self.pending[at..at + take],
            );
            self.written += take as u64;
            at += take;
        }
        Ok(())
    }

    /// Writes the pending bytes with `pwrite`; they are gone afterwards
    /// whatever happens, as in [`MappedLogFile::store_pending`].
    fn write_pending(&mut self) -> io::Result<()> {
        let written = self.write_pending_bytes();
        self.pending.clear();
        written
    }

    fn write_pending_bytes(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let last = self.written + self.pending.len() as u64 - 1;
        let (start, len) = window_at(last);
        self.reserve_to(start + len)?;
        self.file.write_all_at(&self.pending, self.written)?;
        self.written += self.pending.len() as u64;
        Ok(())
    }

    /// Makes the first `end` bytes of the file reserved, then starts
    /// reserving the next window in the background.
    fn reserve_to(&mut self, end: u64) -> io::Result<()> {
        if end <= self.reserved {
            return Ok(());
        }
        self.join_ahead()?;
        if end > self.reserved {
            zero_fill(
                &self.file,
                self.reserved,
                end - self.reserved,
                &AtomicBool::new(false),
            )?;
            self.reserved = end;
        }
        let (start, len) = window_at(self.reserved);
        debug_assert_eq!(start, self.reserved, "reservations end at window ends");
        let (file, cancel) = (self.file.try_clone()?, self.cancel.clone());
        let thread = std::thread::Builder::new()
            .name("ferry-wal-reserve".into())
            .spawn(move || zero_fill(&file, start, len, &cancel))?;
        self.ahead = Some((start + len, thread));
        Ok(())
    }

    /// Waits for the background reservation, if one runs.
    fn join_ahead(&mut self) -> io::Result<()> {
        if let Some((end, thread)) = self.ahead.take() {
            thread
                .join()
                .map_err(|_| io::Error::other("log space reservation panicked"))??;
            self.reserved = end;
        }
        Ok(())
    }

    /// Reserves and maps the window holding byte `offset`.
    fn map_window(&mut self, offset: u64) -> io::Result<()> {
        self.window = None;
        let (start, len) = window_at(offset);
        self.reserve_to(start + len)?;
        // SAFETY: the mapped range lies inside the file, whose blocks were
        // written (zero-filled) and synced, so no store into it can fault
        // for lack of space. Only this writer maps or resizes the file
        // while the mapping lives (the database directory is locked
        // against other processes), and it cuts the file only after
        // dropping the map.
        let window = unsafe {
            MmapOptions::new()
                .offset(start)
                .len(len as usize)
                .map_mut(&self.file)?
        };
        self.window = Some(window);
        self.window_start = start;
        Ok(())
    }

    /// Gives back the reserved space after the last written record.
    fn trim(&mut self) -> io::Result<()> {
        self.window = None;
        // The background fill must not extend the file after the cut.
        self.cancel.store(true, Ordering::Relaxed);
        let joined = self.join_ahead();
        self.cancel.store(false, Ordering::Relaxed);
        // A cancelled fill stopped short of its window: whatever `set_len`
        // does, nothing past `written` counts as reserved any more.
        self.reserved = self.written;
        self.file.set_len(self.written)?;
        joined
    }
}

impl WritableFile for MappedLogFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.store_pending()
    }

    fn sync(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.file.sync_data()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.trim()?;
        // The cut is a size change: `sync_all`, not `sync_data`, so it is
        // durable whatever the file system counts as data.
        self.file.sync_all()
    }

    fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }
}

impl Drop for MappedLogFile {
    fn drop(&mut self) {
        // Best effort and unsynced: after a crash before this reaches the
        // disk, readers skip the zero tail.
        let _ = self.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_file(path: &std::path::Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn ordered_stores_copy_every_byte_at_every_alignment() {
        let source: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(37) | 1).collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 31, 90] {
                let mut target = [0u8; 100];
                store_in_order(&mut target[start..start + len], &source[..len]);
                assert_eq!(&target[start..start + len], &source[..len]);
                assert!(target[..start]
                    .iter()
                    .chain(&target[start + len..])
                    .all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn windows_double_then_stay_aligned() {
        assert_eq!(window_at(0), (0, MIN_WINDOW_BYTES));
        assert_eq!(window_at(MIN_WINDOW_BYTES - 1), (0, MIN_WINDOW_BYTES));
        assert_eq!(
            window_at(MIN_WINDOW_BYTES),
            (MIN_WINDOW_BYTES, MIN_WINDOW_BYTES)
        );
        assert_eq!(window_at((4 << 20) + 1), (4 << 20, 4 << 20));
        assert_eq!(
            window_at(MAX_WINDOW_BYTES),
            (MAX_WINDOW_BYTES, MAX_WINDOW_BYTES)
        );
        assert_eq!(
            window_at(3 * MAX_WINDOW_BYTES - 1),
            (2 * MAX_WINDOW_BYTES, MAX_WINDOW_BYTES)
        );
        // Each window ends where the next begins.
        let mut offset = 0;
        while offset < 5 * MAX_WINDOW_BYTES {
            let (start, len) = window_at(offset);
            assert_eq!(start, offset);
            assert_eq!(start % MIN_WINDOW_BYTES, 0);
            offset = start + len;
        }
    }

    #[test]
    fn stores_and_writes_interleave_across_windows_and_trim_to_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut file = MappedLogFile::new(new_file(&path)).unwrap();
        // Records of a prime length, so that they straddle window ends;
        // every third group goes out by `sync` (pwrite), the rest through
        // the map, as a mix of Buffered and Sync writes would.
        let record =
            |i: usize| -> Vec<u8> { (0..4099).map(|j| ((i * 7 + j) % 251) as u8 + 1).collect() };
        let count = (MAX_WINDOW_BYTES as usize * 2) / 4099 + 5;
        for i in 0..count {
            file.append(&record(i)).unwrap();
            if i % 3 == 0 {
                file.sync().unwrap();
            } else {
                file.flush().unwrap();
            }
        }
        let expected_len = (count * 4099) as u64;
        assert_eq!(file.len(), expected_len);
        // What a reader (or a process after a crash) sees before the trim:
        // every record, then only zeros.
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() as u64 > expected_len, "space is reserved ahead");
        assert!(bytes[expected_len as usize..].iter().all(|&b| b == 0));
        for (i, chunk) in bytes[..expected_len as usize].chunks(4099).enumerate() {
            assert_eq!(chunk, &record(i)[..], "record {i}");
        }
        file.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), expected_len);
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap().len() as u64, expected_len);
    }

    #[test]
    fn drop_cuts_back_to_what_reached_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut file = MappedLogFile::new(new_file(&path)).unwrap();
        file.append(b"flushed").unwrap();
        file.flush().unwrap();
        file.append(b"never flushed").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"flushed");
    }
}
