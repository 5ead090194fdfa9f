//! The envelope of the chain's own records (checkpoint records, the head):
//! `magic: 8 bytes | version: u32 LE | body length: u32 LE | body CRC32:
//! u32 LE | body`.

use std::io;

const HEADER_LEN: usize = 20;

/// Wraps `body` in the envelope.
pub(crate) fn seal(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a record read from `name`, checked; damage is an error
/// naming it. `what` names the kind of record for messages.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    version: u32,
    what: &str,
    name: &str,
) -> io::Result<&'a [u8]> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {why}"));
    if bytes.len() < HEADER_LEN || &bytes[..8] != magic {
        return Err(bad(format!("not a Ferry {what}")));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let found = word(8);
    if found != version {
        return Err(bad(format!(
            "{what} version {found}; this build reads {version}"
        )));
    }
    let body = &bytes[HEADER_LEN..];
    if word(12) as usize != body.len() {
        return Err(bad(format!(
            "body of {} bytes where the header says {}",
            body.len(),
            word(12)
        )));
    }
    if crc32fast::hash(body) != word(16) {
        return Err(bad("CRC mismatch".into()));
    }
    Ok(body)
}
