//! Leveled compaction: choosing what to compact.
//!
//! Level 0 holds flushed memtables and may overlap; it is compacted (all of
//! it, with the overlapping tables of level 1) once it holds
//! `level0_compaction_trigger` tables. Level `n >= 1` may hold
//! `level1_max_bytes · multiplier^(n-1)` bytes; the level furthest over its
//! budget gives up one table, chosen round-robin through the key space,
//! which is merged with the tables of level `n+1` it overlaps.

use super::Compaction;
use crate::manifest::version::{Version, NUM_LEVELS};
use crate::Options;

/// Budget of `level` in bytes (level 0 is budgeted by table count).
pub(crate) fn level_max_bytes(options: &Options, level: usize) -> u64 {
    debug_assert!(level >= 1);
    let mut bytes = options.level1_max_bytes;
    for _ in 1..level {
        bytes = bytes.saturating_mul(options.level_size_multiplier);
    }
    bytes
}

/// The level most in need of compaction and its score (>= 1 means needed).
pub(crate) fn most_urgent(version: &Version, options: &Options) -> (usize, f64) {
    let mut best = (
        0,
        version.levels[0].len() as f64 / options.level0_compaction_trigger as f64,
    );
    for level in 1..NUM_LEVELS - 1 {
        let score = version.level_bytes(level) as f64 / level_max_bytes(options, level) as f64;
        if score > best.1 {
            best = (level, score);
        }
    }
    best
}

/// Bytes over budget: level 0's once it holds its trigger's tables, and
/// each deeper level's excess (the last level has no budget).
pub(crate) fn debt_bytes(version: &Version, options: &Options) -> u64 {
    let level0 = if version.levels[0].len() >= options.level0_compaction_trigger {
        version.level_bytes(0)
    } else {
        0
    };
    (1..NUM_LEVELS - 1).fold(level0, |debt, level| {
        debt + version
            .level_bytes(level)
            .saturating_sub(level_max_bytes(options, level))
    })
}

/// Picks the next compaction, if any level is over budget. `pointers`
/// remembers, per level, the largest key compacted last.
pub(crate) fn pick(
    version: &Version,
    options: &Options,
    pointers: &mut [Vec<u8>; NUM_LEVELS],
) -> Option<Compaction> {
    let (level, score) = most_urgent(version, options);
    if score < 1.0 {
        return None;
    }
    let inputs = if level == 0 {
        version.levels[0].clone()
    } else {
        let files = &version.levels[level];
        let pointer = &pointers[level];
        let chosen = files
            .iter()
            .find(|f| pointer.is_empty() || f.largest_user_key() > pointer.as_slice())
            .or_else(|| files.first())?
            .clone();
        pointers[level] = chosen.largest_user_key().to_vec();
        vec![chosen]
    };
    Some(with_next_level(version, level, inputs, true))
}

/// A compaction of the tables of `level` that meet `[start, end]`.
pub(crate) fn for_range(
    version: &Version,
    level: usize,
    start: Option<&[u8]>,
    end: Option<&[u8]>,
) -> Option<Compaction> {
    debug_assert!(level < NUM_LEVELS - 1);
    let inputs = if level == 0 {
        // Level-0 tables overlap each other: taking only some of those that
        // meet the range could move an older version below a newer one.
        if version.levels[0].iter().any(|f| f.overlaps(start, end)) {
            version.levels[0].clone()
        } else {
            Vec::new()
        }
    } else {
        version.overlapping(level, start, end)
    };
    if inputs.is_empty() {
        return None;
    }
    Some(with_next_level(version, level, inputs, false))
}

fn with_next_level(
    version: &Version,
    level: usize,
    inputs: Vec<std::sync::Arc<crate::manifest::version::TableFile>>,
    allow_trivial_move: bool,
) -> Compaction {
    let start = inputs
        .iter()
        .map(|f| f.smallest_user_key())
        .min()
        .map(<[u8]>::to_vec);
    let end = inputs
        .iter()
        .map(|f| f.largest_user_key())
        .max()
        .map(<[u8]>::to_vec);
    let next_level_inputs = version.overlapping(level + 1, start.as_deref(), end.as_deref());
    Compaction {
        level,
        inputs,
        next_level_inputs,
        allow_trivial_move,
    }
}
