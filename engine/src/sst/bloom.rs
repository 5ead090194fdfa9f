//! Bloom filters over the user keys of a table.
//!
//! ## Format
//!
//! ```text
//! filter = bit array (n bytes) | probes: u8
//! ```
//!
//! A key's 64-bit xxh3 hash `h` sets bits `h + i·δ (mod m)` for `i < probes`,
//! with `δ = h rotated by 31` (double hashing, as LevelDB). With 10 bits per
//! key and 6 probes the false-positive rate is about 1%.

pub(crate) fn hash(user_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_key)
}

/// Builds a filter from key hashes.
pub(crate) fn build(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    let probes = ((bits_per_key as f64) * 0.69).round().clamp(1.0, 30.0) as u8;
    let bits = (hashes.len() * bits_per_key).max(64);
    let bytes = bits.div_ceil(8);
    let bits = (bytes * 8) as u64;
    let mut filter = vec![0u8; bytes + 1];
    for &h in hashes {
        let delta = h.rotate_left(31);
        let mut h = h;
        for _ in 0..probes {
            let bit = h % bits;
            filter[(bit / 8) as usize] |= 1 << (bit % 8);
            h = h.wrapping_add(delta);
        }
    }
    filter[bytes] = probes;
    filter
}

/// False means the key is certainly absent. A malformed filter answers
/// true (it can only cost a block read, never a wrong answer).
pub(crate) fn may_contain(filter: &[u8], h: u64) -> bool {
    let Some((&probes, array)) = filter.split_last() else {
        return true;
    };
    if array.is_empty() || probes == 0 || probes > 30 {
        return true;
    }
    let bits = array.len() as u64 * 8;
    let delta = h.rotate_left(31);
    let mut h = h;
    for _ in 0..probes {
        let bit = h % bits;
        if array[(bit / 8) as usize] & (1 << (bit % 8)) == 0 {
            return false;
        }
        h = h.wrapping_add(delta);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let keys: Vec<u64> = (0..10_000u32).map(|i| hash(&i.to_be_bytes())).collect();
        let filter = build(&keys, 10);
        assert!(keys.iter().all(|&h| may_contain(&filter, h)));
        let false_positives = (10_000..110_000u32)
            .filter(|i| may_contain(&filter, hash(&i.to_be_bytes())))
            .count();
        let rate = false_positives as f64 / 100_000.0;
        assert!(rate < 0.02, "false-positive rate {rate}");
    }

    #[test]
    fn malformed_filter_never_excludes() {
        assert!(may_contain(&[], 42));
        assert!(may_contain(&[0, 0, 0], 42));
    }
}
