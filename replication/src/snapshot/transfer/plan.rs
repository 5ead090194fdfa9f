//! A follower's plan for an offered snapshot: per file, how many bytes it
//! already holds (a prefix from an interrupted attempt, or the whole file
//! linked from its own state: the differential transfer).

use crate::network::pb;
use crate::state_machine::SmShared;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// In a staging directory: some of its files were linked from this node's
/// own state (not received), so the assembled state must be checked
/// against the leader's state hash, in whatever later attempt it ends.
pub(super) const REUSED_LOCAL: &str = "REUSED-LOCAL";

pub(super) struct Plan {
    pub(super) have: Vec<u64>,
    pub(super) reused_local: bool,
    pub(super) reused_bytes: u64,
}

/// Decides, per offered file, how many bytes are already here: a prefix
/// from an interrupted attempt, or a whole file linked from local state.
pub(super) fn make_plan(sm: &SmShared, staging: &Path, offer: &pb::Offer) -> io::Result<Plan> {
    let fs = &**sm.fs();
    fs.create_dir_all(staging)?;
    // Candidate sources of reusable files: name -> (path, known CRC).
    let mut sources: HashMap<String, Vec<(PathBuf, Option<u32>)>> = HashMap::new();
    if !offer.full_only {
        if let Ok(Some(current)) = sm.snapshots().current() {
            for file in &current.manifest().files {
                sources
                    .entry(file.name.clone())
                    .or_default()
                    .push((current.dir().join(&file.name), Some(file.crc)));
            }
        }
        let mut dirs = vec![sm.engine_dir()];
        if let Some(incoming) = staging.parent() {
            for name in fs.list(incoming)? {
                let path = incoming.join(name);
                if path != staging {
                    dirs.push(path);
                }
            }
        }
        for dir in dirs {
            // Another receive's directory may go meanwhile.
            let Ok(names) = fs.list(&dir) else { continue };
            for name in names {
                let path = dir.join(&name);
                sources.entry(name).or_default().push((path, None));
            }
        }
    } else {
        // A previous differential attempt failed: nothing local is trusted.
        fs.remove_dir_all(staging)?;
        fs.create_dir_all(staging)?;
    }
    let mut plan = Plan {
        have: Vec::with_capacity(offer.files.len()),
        // An earlier attempt linked local files into this directory.
        reused_local: fs.exists(&staging.join(REUSED_LOCAL)),
        reused_bytes: 0,
    };
    for file in &offer.files {
        let target = staging.join(&file.name);
        if let Ok(len) = fs.file_size(&target) {
            if len < file.size || (len == file.size && fs.file_crc(&target)? == file.crc) {
                plan.have.push(len);
                continue;
            }
            fs.remove_file(&target)?;
        }
        let mut have = 0;
        for (path, known_crc) in sources.get(&file.name).into_iter().flatten() {
            if fs.is_dir(path) || fs.file_size(path).ok() != Some(file.size) {
                continue;
            }
            let crc = match known_crc {
                Some(crc) => *crc,
                None => match fs.file_crc(path) {
                    Ok(crc) => crc,
                    // Gone meanwhile (another receive's, removed).
                    Err(_) => continue,
                },
            };
            if !plan.reused_local {
                // Synced with the links, by the directory sync below.
                fs.create(&staging.join(REUSED_LOCAL))?.sync()?;
            }
            if crc == file.crc && crate::snapshot::link_or_copy(fs, path, &target).is_ok() {
                have = file.size;
                plan.reused_local = true;
                plan.reused_bytes += file.size;
                break;
            }
        }
        plan.have.push(have);
    }
    fs.sync_dir(staging)?;
    Ok(plan)
}
