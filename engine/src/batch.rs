//! Atomic groups of writes, and their encoding as a WAL payload.
//!
//! ## Format (version 1; the WAL record header carries the first sequence)
//!
//! ```text
//! batch  = count: u32 LE, op*
//! op     = kind: u8 (0 delete, 1 put), key: varint len ‖ bytes,
//!          [value: varint len ‖ bytes]   (puts only)
//! ```
//!
//! Operation `i` of a batch whose record carries sequence `s` is written at
//! sequence `s + i`, so a batch occupies `count` consecutive sequences.

use crate::key::ValueKind;
use crate::varint::{self, Cursor};

/// A group of puts and deletes applied atomically: after a crash either all
/// of them are visible or none.
///
/// ```
/// use ferry_engine::{Db, Options, WriteBatch};
/// # let dir = tempfile::tempdir().unwrap();
/// let db = Db::open(dir.path(), Options::default())?;
/// let mut batch = WriteBatch::new();
/// batch.put(b"from", b"90");
/// batch.put(b"to", b"110");
/// batch.delete(b"pending");
/// db.write(batch)?;
/// assert_eq!(db.get(b"to")?.as_deref(), Some(&b"110"[..]));
/// # Ok::<(), ferry_engine::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    // Encoded ops without the count prefix; the count is kept separately.
    ops: Vec<u8>,
    count: u32,
    user_bytes: u64,
}

/// A place in a [`WriteBatch`] to roll back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavePoint {
    ops: usize,
    count: u32,
    user_bytes: u64,
}

/// One decoded operation of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchOp<'a> {
    pub(crate) kind: ValueKind,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

impl WriteBatch {
    /// An empty batch.
    ///
    /// ```
    /// let batch = ferry_engine::WriteBatch::new();
    /// assert!(batch.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every operation of `other` after this batch's own.
    ///
    /// ```
    /// let mut batch = ferry_engine::WriteBatch::new();
    /// batch.put(b"a", b"1");
    /// let mut more = ferry_engine::WriteBatch::new();
    /// more.delete(b"b");
    /// batch.append(&more);
    /// assert_eq!(batch.len(), 2);
    /// ```
    pub fn append(&mut self, other: &WriteBatch) {
        self.ops.extend_from_slice(&other.ops);
        self.count += other.count;
        self.user_bytes += other.user_bytes;
    }

    /// Adds a put of `key` to `value`.
    ///
    /// ```
    /// let mut batch = ferry_engine::WriteBatch::new();
    /// batch.put(b"k", b"v");
    /// assert_eq!(batch.len(), 1);
    /// ```
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.ops.push(ValueKind::Put as u8);
        varint::put_bytes(&mut self.ops, key);
        varint::put_bytes(&mut self.ops, value);
        self.count += 1;
        self.user_bytes += (key.len() + value.len()) as u64;
    }

    /// Adds a delete of `key`.
    ///
    /// ```
    /// let mut batch = ferry_engine::WriteBatch::new();
    /// batch.delete(b"k");
    /// assert_eq!(batch.len(), 1);
    /// ```
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.ops.push(ValueKind::Delete as u8);
        varint::put_bytes(&mut self.ops, key);
        self.count += 1;
        self.user_bytes += key.len() as u64;
    }

    /// Number of operations.
    ///
    /// ```
    /// assert_eq!(ferry_engine::WriteBatch::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the batch holds no operation.
    ///
    /// ```
    /// assert!(ferry_engine::WriteBatch::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes every operation.
    ///
    /// ```
    /// let mut batch = ferry_engine::WriteBatch::new();
    /// batch.put(b"k", b"v");
    /// batch.clear();
    /// assert!(batch.is_empty());
    /// ```
    pub fn clear(&mut self) {
        self.ops.clear();
        self.count = 0;
        self.user_bytes = 0;
    }

    /// Marks the batch as it is now, for [`WriteBatch::rollback_to`].
    ///
    /// ```
    /// let mut batch = ferry_engine::WriteBatch::new();
    /// batch.put(b"kept", b"1");
    /// let mark = batch.savepoint();
    /// batch.put(b"undone", b"2");
    /// batch.rollback_to(mark);
    /// assert_eq!(batch.len(), 1);
    /// ```
    pub fn savepoint(&self) -> SavePoint {
        SavePoint {
            ops: self.ops.len(),
            count: self.count,
            user_bytes: self.user_bytes,
        }
    }

    /// Removes every operation added since `mark` was taken.
    ///
    /// # Panics
    /// If the batch was rolled back or cleared to before `mark` since.
    pub fn rollback_to(&mut self, mark: SavePoint) {
        assert!(
            mark.ops <= self.ops.len() && mark.count <= self.count,
            "rolling a batch forward to a savepoint it no longer reaches"
        );
        self.ops.truncate(mark.ops);
        self.count = mark.count;
        self.user_bytes = mark.user_bytes;
    }

    /// Bytes of keys and values the user asked to write.
    pub(crate) fn user_bytes(&self) -> u64 {
        self.user_bytes
    }

    /// Size of the encoded payload: the bytes its WAL record holds (a
    /// record holds at most [`crate::wal::MAX_PAYLOAD_LEN`]).
    ///
    /// ```
    /// let mut batch = ferry_engine::WriteBatch::new();
    /// let empty = batch.encoded_len();
    /// batch.put(b"key", b"value");
    /// assert!(batch.encoded_len() >= empty + 8);
    /// ```
    pub fn encoded_len(&self) -> usize {
        4 + self.ops.len()
    }

    /// The WAL payload of this batch, as its two parts: the count, then the
    /// encoded ops.
    pub(crate) fn wal_payload(&self) -> ([u8; 4], &[u8]) {
        (self.count.to_le_bytes(), &self.ops)
    }

    pub(crate) fn ops(&self) -> BatchIter<'_> {
        BatchIter {
            cursor: Cursor::new(&self.ops),
            remaining: self.count,
        }
    }
}

/// Iterates over the operations of an encoded batch.
pub(crate) struct BatchIter<'a> {
    cursor: Cursor<'a>,
    remaining: u32,
}

impl<'a> BatchIter<'a> {
    /// Decodes a WAL payload. Returns `None` if the header is short.
    pub(crate) fn decode(payload: &'a [u8]) -> Option<BatchIter<'a>> {
        let count = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
        Some(BatchIter {
            cursor: Cursor::new(payload.get(4..)?),
            remaining: count,
        })
    }
}

impl<'a> Iterator for BatchIter<'a> {
    /// `None` inside `Some` marks a malformed op: the payload passed its CRC
    /// but does not decode, which only a bug or a forged file produces.
    type Item = Option<BatchOp<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let op = (|| {
            let kind = ValueKind::from_u8(self.cursor.u8()?)?;
            let key = self.cursor.bytes()?;
            let value = match kind {
                ValueKind::Put => self.cursor.bytes()?,
                ValueKind::Delete => &[],
            };
            Some(BatchOp { kind, key, value })
        })();
        if op.is_none() {
            self.remaining = 0;
        }
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        let mut batch = WriteBatch::new();
        batch.put(b"a", b"1");
        batch.delete(b"b");
        let (count, ops) = batch.wal_payload();
        let payload = [&count[..], ops].concat();
        assert_eq!(payload.len(), batch.encoded_len());
        let ops: Vec<_> = BatchIter::decode(&payload).unwrap().collect();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].unwrap().key, b"a");
        assert_eq!(ops[0].unwrap().value, b"1");
        assert_eq!(ops[1].unwrap().kind, ValueKind::Delete);
    }

    #[test]
    fn malformed_payload_is_reported_not_panicking() {
        let payload = [2, 0, 0, 0, 1, 200];
        let ops: Vec<_> = BatchIter::decode(&payload).unwrap().collect();
        assert_eq!(ops, vec![None]);
        assert!(BatchIter::decode(&[1, 0]).is_none());
    }
}
