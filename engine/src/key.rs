//! Internal keys: a user key tagged with the sequence number and kind of the
//! write that produced it.
//!
//! ## Format
//!
//! ```text
//! internal key = user key ‖ trailer (8 bytes, big-endian)
//! trailer      = sequence << 8 | kind        (kind: 0 = delete, 1 = put)
//! ```
//!
//! Internal keys order by user key ascending, then trailer *descending*, so
//! the newest version of a key comes first and a seek to
//! `(key, snapshot_sequence, MAX_KIND)` lands on the newest version a
//! snapshot may see. Sequence numbers use 56 bits.

use std::cmp::Ordering;

/// A write's position in the total order of all writes.
pub type SeqNo = u64;

/// The largest sequence number; reserved for seek targets.
pub(crate) const MAX_SEQUENCE: SeqNo = (1 << 56) - 1;

pub(crate) const TRAILER_LEN: usize = 8;

/// What an internal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ValueKind {
    Delete = 0,
    Put = 1,
}

/// Sorts after every real kind for the same sequence (so before it in
/// internal order): the kind used for seek targets.
const SEEK_KIND: u8 = 0xff;

impl ValueKind {
    pub(crate) fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(ValueKind::Delete),
            1 => Some(ValueKind::Put),
            _ => None,
        }
    }
}

/// Appends the internal key for `(user_key, sequence, kind)` to `out`.
pub(crate) fn encode_into(out: &mut Vec<u8>, user_key: &[u8], sequence: SeqNo, kind: ValueKind) {
    debug_assert!(sequence <= MAX_SEQUENCE);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&((sequence << 8) | kind as u64).to_be_bytes());
}

#[cfg(test)]
pub(crate) fn encode(user_key: &[u8], sequence: SeqNo, kind: ValueKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    encode_into(&mut out, user_key, sequence, kind);
    out
}

/// The smallest internal key for `user_key` visible at `sequence`: a seek to
/// it finds the newest version with a sequence at most `sequence`.
pub(crate) fn seek_key(user_key: &[u8], sequence: SeqNo) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&((sequence << 8) | SEEK_KIND as u64).to_be_bytes());
    out
}

/// The largest internal key for `user_key` (its oldest possible version).
pub(crate) fn last_key_of(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&0u64.to_be_bytes());
    out
}

/// The first 16 bytes of a user key as a big-endian integer, zero-padded.
///
/// Comparing prefixes orders keys as their bytes do whenever the prefixes
/// differ; equal prefixes need the full comparison. Hot searches (memtable,
/// table index) compare these first, one integer compare instead of a
/// pointer chase and a `memcmp`.
#[inline]
pub(crate) fn prefix_u128(user_key: &[u8]) -> u128 {
    let mut prefix = [0u8; 16];
    let head = user_key.len().min(16);
    prefix[..head].copy_from_slice(&user_key[..head]);
    u128::from_be_bytes(prefix)
}

/// Splits an internal key. Callers pass keys that were validated when their
/// block was decoded, so a short key is a bug, caught in debug builds.
#[inline]
pub(crate) fn user_key(internal: &[u8]) -> &[u8] {
    debug_assert!(internal.len() >= TRAILER_LEN);
    &internal[..internal.len().saturating_sub(TRAILER_LEN)]
}

#[inline]
fn trailer(internal: &[u8]) -> u64 {
    let start = internal.len().saturating_sub(TRAILER_LEN);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&internal[start..]);
    u64::from_be_bytes(bytes)
}

#[inline]
pub(crate) fn sequence(internal: &[u8]) -> SeqNo {
    trailer(internal) >> 8
}

#[inline]
pub(crate) fn kind(internal: &[u8]) -> Option<ValueKind> {
    ValueKind::from_u8(trailer(internal) as u8)
}

/// The internal-key order: user key ascending, then trailer descending.
#[inline]
pub(crate) fn compare(a: &[u8], b: &[u8]) -> Ordering {
    user_key(a)
        .cmp(user_key(b))
        .then_with(|| trailer(b).cmp(&trailer(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_sort_first() {
        let old = encode(b"k", 1, ValueKind::Put);
        let new = encode(b"k", 2, ValueKind::Delete);
        assert_eq!(compare(&new, &old), Ordering::Less);
        assert_eq!(compare(&seek_key(b"k", 2), &new), Ordering::Less);
        assert_eq!(compare(&seek_key(b"k", 1), &new), Ordering::Greater);
        assert_eq!(
            compare(
                &encode(b"k", 9, ValueKind::Put),
                &encode(b"ka", 1, ValueKind::Put)
            ),
            Ordering::Less
        );
        assert_eq!(compare(&last_key_of(b"k"), &old), Ordering::Greater);
        assert_eq!(sequence(&new), 2);
        assert_eq!(kind(&new), Some(ValueKind::Delete));
        assert_eq!(user_key(&new), b"k");
    }
}
