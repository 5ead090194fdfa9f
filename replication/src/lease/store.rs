//! How leases are kept in the engine (the module's `## Format`).

use super::LeaseRecord;
use ferry_engine::Snapshot;
use std::io;

const RECORD_PREFIX: &[u8] = b"\x00lease/";
const INDEX_PREFIX: &[u8] = b"\x00lease-key/";
const DRAIN_PREFIX: &[u8] = b"\x00lease-drain/";
const VERSION: u8 = 1;

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("lease state: undecodable {what}"),
    )
}

pub(crate) fn record_key(id: u64) -> Vec<u8> {
    [RECORD_PREFIX, &id.to_be_bytes()].concat()
}

/// The index entry saying `key` is attached to lease `id`.
pub(crate) fn index_key(id: u64, key: &[u8]) -> Vec<u8> {
    [INDEX_PREFIX, &id.to_be_bytes(), key].concat()
}

/// The lease id that follows `prefix` in `key` (which starts with it).
fn id_after(prefix: &[u8], key: &[u8], what: &str) -> io::Result<u64> {
    let id: [u8; 8] = key[prefix.len()..].try_into().map_err(|_| bad(what))?;
    Ok(u64::from_be_bytes(id))
}

/// The marker of revoked lease `id` whose keys are not all deleted yet.
pub(crate) fn drain_key(id: u64) -> Vec<u8> {
    [DRAIN_PREFIX, &id.to_be_bytes()].concat()
}

/// The revoked leases whose keys are not all deleted yet (one marker per
/// revoke that did not fit, so no more than leases were ever granted at
/// once).
pub(crate) fn draining(view: &Snapshot) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for item in view.prefix(DRAIN_PREFIX) {
        let (key, _) = item.map_err(io::Error::other)?;
        ids.push(id_after(DRAIN_PREFIX, &key, "draining lease id")?);
    }
    Ok(ids)
}

fn index_prefix(id: u64) -> Vec<u8> {
    [INDEX_PREFIX, &id.to_be_bytes()].concat()
}

pub(crate) fn encode(record: &LeaseRecord) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend(postcard::to_stdvec(record).expect("a lease record encodes"));
    out
}

pub(crate) fn decode(bytes: &[u8]) -> io::Result<LeaseRecord> {
    match bytes.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).map_err(|_| bad("lease record")),
        _ => Err(bad("lease record version")),
    }
}

/// Lease `id`'s record in `view`.
pub(crate) fn get(view: &Snapshot, id: u64) -> io::Result<Option<LeaseRecord>> {
    match view.get(record_key(id)).map_err(io::Error::other)? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Every lease in `view`, by id.
pub(crate) fn all(view: &Snapshot) -> io::Result<Vec<(u64, LeaseRecord)>> {
    let mut leases = Vec::new();
    for item in view.prefix(RECORD_PREFIX) {
        let (key, value) = item.map_err(io::Error::other)?;
        leases.push((id_after(RECORD_PREFIX, &key, "lease id")?, decode(&value)?));
    }
    Ok(leases)
}

/// The user keys attached to lease `id`, in order: at most `limit`, and
/// whether there are more.
pub(crate) fn attached(view: &Snapshot, id: u64, limit: usize) -> io::Result<(Vec<Vec<u8>>, bool)> {
    attached_within(view, id, limit, usize::MAX, 0)
}

/// As [`attached`], also stopping before the keys' bytes, each counted
/// with `per_key` more, pass `max_bytes`.
pub(crate) fn attached_within(
    view: &Snapshot,
    id: u64,
    limit: usize,
    max_bytes: usize,
    per_key: usize,
) -> io::Result<(Vec<Vec<u8>>, bool)> {
    let prefix = index_prefix(id);
    let mut keys = Vec::new();
    let mut bytes = 0usize;
    for item in view.prefix(&prefix) {
        let (key, _) = item.map_err(io::Error::other)?;
        let key = &key[prefix.len()..];
        bytes = bytes.saturating_add(key.len() + per_key);
        if keys.len() == limit || (bytes > max_bytes && !keys.is_empty()) {
            return Ok((keys, true));
        }
        keys.push(key.to_vec());
    }
    Ok((keys, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_records_keep_their_bytes() {
        let record = LeaseRecord {
            ttl_ms: 10_000,
            remaining_ms: Some(4_000),
        };
        let bytes = encode(&record);
        assert_eq!(bytes, [1, 0x90, 0x4e, 1, 0xa0, 0x1f]);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert!(decode(&[2, 0]).is_err(), "an unknown version");
        assert!(decode(&[1, 0x90]).is_err(), "cut short");
        assert_eq!(record_key(258), b"\x00lease/\0\0\0\0\0\0\x01\x02");
        assert_eq!(index_key(1, b"k"), b"\x00lease-key/\0\0\0\0\0\0\0\x01k");
    }
}
