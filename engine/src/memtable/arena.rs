//! The memory a memtable's skip list lives in: large chunks handed out by
//! bumping a cursor, and freed together when the memtable is dropped.
//!
//! A memtable only grows and is freed whole (after its flush), so it needs
//! no allocator per entry: one allocation per megabyte instead of one per
//! entry, nothing to free entry by entry, and entries inserted one after
//! another sit next to each other in memory.
//!
//! Invariant: a chunk's memory never moves or is freed while the arena
//! lives (the `Vec` holds boxes; growing it moves the boxes' pointers, not
//! the memory they point to), so an address handed out stays valid until
//! the arena is dropped.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Bytes of one chunk. An allocation of more than a quarter of this gets a
/// chunk of its own, so at most a quarter of a chunk is ever left unused.
const CHUNK_BYTES: usize = 1 << 20;

/// Every address handed out is a multiple of this.
pub(super) const ALIGN: usize = 8;

pub(super) struct Arena {
    /// Each chunk's start and layout. (Raw allocations, not boxes: moving a
    /// box would assert that nothing else points into it, and the skip
    /// list's nodes point into every chunk.)
    chunks: Vec<(NonNull<u8>, Layout)>,
    /// The unused rest of the current chunk.
    cursor: *mut u8,
    left: usize,
    /// Bytes of all chunks.
    reserved: usize,
}

// SAFETY: the arena owns its chunks (plain memory, no thread affinity); the
// raw cursor points into the last of them.
unsafe impl Send for Arena {}

impl Arena {
    pub(super) fn new() -> Arena {
        Arena {
            chunks: Vec::new(),
            cursor: std::ptr::null_mut(),
            left: 0,
            reserved: 0,
        }
    }

    /// `bytes` of uninitialised memory, [`ALIGN`]ed, valid until the arena
    /// is dropped.
    pub(super) fn allocate(&mut self, bytes: usize) -> *mut u8 {
        let bytes = bytes
            .max(1)
            .checked_next_multiple_of(ALIGN)
            .expect("an allocation under the address space");
        if bytes > CHUNK_BYTES / 4 {
            return self.chunk(bytes);
        }
        if bytes > self.left {
            self.cursor = self.chunk(CHUNK_BYTES);
            self.left = CHUNK_BYTES;
        }
        let at = self.cursor;
        // SAFETY: `bytes <= left`, so `at + bytes` stays inside the chunk
        // (or one past its end).
        self.cursor = unsafe { at.add(bytes) };
        self.left -= bytes;
        at
    }

    /// Bytes the arena holds from the system allocator.
    #[cfg(test)]
    pub(super) fn reserved(&self) -> usize {
        self.reserved
    }

    fn chunk(&mut self, bytes: usize) -> *mut u8 {
        let layout = Layout::from_size_align(bytes, ALIGN).expect("chunk layout");
        // SAFETY: `bytes` is at least `ALIGN` (callers allocate at least one
        // byte, rounded up), so the layout is not zero-sized.
        let at = unsafe { alloc(layout) };
        let Some(at) = NonNull::new(at) else {
            handle_alloc_error(layout)
        };
        self.chunks.push((at, layout));
        self.reserved += bytes;
        at.as_ptr()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for (at, layout) in self.chunks.drain(..) {
            // SAFETY: allocated in `chunk` with this layout, freed once here.
            unsafe { dealloc(at.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_aligned_distinct_and_stable() {
        let mut arena = Arena::new();
        let mut seen: Vec<(usize, usize)> = Vec::new();
        for size in [
            1,
            8,
            13,
            CHUNK_BYTES / 4 + 1,
            100,
            CHUNK_BYTES / 4,
            7,
            3 * CHUNK_BYTES,
        ] {
            for _ in 0..20 {
                let at = arena.allocate(size);
                assert_eq!(at as usize % ALIGN, 0);
                // SAFETY: `size` bytes at `at` are the arena's, handed out once.
                unsafe { std::ptr::write_bytes(at, 0xab, size) };
                seen.push((at as usize, size));
            }
        }
        seen.sort();
        for pair in seen.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap: {pair:?}");
        }
        assert!(arena.reserved() >= seen.iter().map(|s| s.1).sum::<usize>());
    }
}
