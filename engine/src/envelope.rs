//! The envelope of Ferry's small self-describing files: the one framing
//! every such file is written in, and the one place they are checked.
//!
//! Used by a checkpoint's `CHECKPOINT`, a snapshot's `SNAPSHOT`, the Raft
//! log's `VOTE` and `PURGED`, and a backup chain's checkpoint records and
//! head. (The WAL and SST files frame records and blocks, not whole files,
//! and have formats of their own.)
//!
//! ## Format
//!
//! ```text
//! file = magic: 8 bytes | version: u32 LE | body length: u32 LE | body crc: u32 LE | body
//! crc  = CRC32 (IEEE) of body
//! ```
//!
//! The magic names the kind of file, the version the body's encoding; the
//! length catches a file cut short or with bytes appended, the CRC damage.
//!
//! **Earlier layout.** Before the envelope was shared, `CHECKPOINT`,
//! `SNAPSHOT`, `VOTE` and `PURGED` had no length field (`magic | version |
//! crc | body`, a 16-byte header). Each of those kinds lists the versions
//! written that way in [`Kind::unsized_versions`]; a file of such a version
//! is still read, with the body taken as the rest of the file. New files
//! are always written in the format above, under the kind's
//! [`Kind::version`].

/// Bytes before the body.
pub const HEADER_LEN: usize = 20;

/// Header bytes of the earlier layout, which had no length field.
const UNSIZED_HEADER_LEN: usize = 16;

/// One kind of file: what its envelope must say.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The first eight bytes of every file of this kind.
    pub magic: [u8; 8],
    /// The version this release writes (and reads).
    pub version: u32,
    /// Earlier versions, written in the layout without a length field,
    /// that this release still reads (their bodies decode as this
    /// version's).
    pub unsized_versions: &'static [u32],
    /// What the file is, for messages ("checkpoint metadata").
    pub what: &'static str,
}

/// Why bytes are not a sound envelope of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The magic is wrong, or the file is shorter than a header.
    #[error("not a Ferry {what} (bad magic or cut short)")]
    NotThisKind {
        /// The kind expected.
        what: &'static str,
    },
    /// A version this release does not read.
    #[error("{what} version {found}; this release reads version {reads}")]
    Version {
        /// The kind expected.
        what: &'static str,
        /// The version in the file.
        found: u32,
        /// The version this release writes.
        reads: u32,
    },
    /// The body is not as long as the header says.
    #[error("{what} body of {found} bytes where the header says {expected}")]
    Length {
        /// The kind expected.
        what: &'static str,
        /// The bytes after the header.
        found: usize,
        /// The length the header gives.
        expected: u32,
    },
    /// The body does not match its CRC.
    #[error("{what} CRC mismatch")]
    Crc {
        /// The kind expected.
        what: &'static str,
    },
}

impl EnvelopeError {
    /// Offset in the file of the field found bad.
    pub fn offset(&self) -> u64 {
        match self {
            EnvelopeError::NotThisKind { .. } => 0,
            EnvelopeError::Version { .. } => 8,
            EnvelopeError::Length { .. } => 12,
            EnvelopeError::Crc { .. } => 16,
        }
    }
}

/// A checked envelope's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The version in the header (this release's, or an unsized earlier one).
    pub version: u32,
    /// The body.
    pub body: &'a [u8],
    /// The body's CRC32, as stored and checked.
    pub crc: u32,
}

/// Wraps `body` in an envelope of `kind`, at the kind's current version.
///
/// # Panics
/// If `body` is 4 GiB or longer (these files are small: a list of files,
/// a vote; nothing reaches that).
pub fn seal(kind: &Kind, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len()).expect("an envelope's body is under 4 GiB");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&kind.magic);
    out.extend_from_slice(&kind.version.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks `bytes` as an envelope of `kind` and returns its body.
pub fn open<'a>(kind: &Kind, bytes: &'a [u8]) -> Result<Opened<'a>, EnvelopeError> {
    let what = kind.what;
    if bytes.len() < UNSIZED_HEADER_LEN || bytes[..8] != kind.magic {
        return Err(EnvelopeError::NotThisKind { what });
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    let (crc, body) = if version == kind.version {
        if bytes.len() < HEADER_LEN {
            return Err(EnvelopeError::NotThisKind { what });
        }
        let body = &bytes[HEADER_LEN..];
        let expected = word(12);
        if body.len() != expected as usize {
            return Err(EnvelopeError::Length {
                what,
                found: body.len(),
                expected,
            });
        }
        (word(16), body)
    } else if kind.unsized_versions.contains(&version) {
        (word(12), &bytes[UNSIZED_HEADER_LEN..])
    } else {
        return Err(EnvelopeError::Version {
            what,
            found: version,
            reads: kind.version,
        });
    };
    if crc32fast::hash(body) != crc {
        return Err(EnvelopeError::Crc { what });
    }
    Ok(Opened { version, body, crc })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind {
        magic: *b"FERRYTST",
        version: 2,
        unsized_versions: &[1],
        what: "test file",
    };

    #[test]
    fn a_sealed_body_opens_and_its_bytes_are_the_documented_layout() {
        let sealed = seal(&KIND, b"body");
        // A fixture of this release's layout: it must never change.
        let expected = [
            b"FERRYTST".as_slice(),
            &2u32.to_le_bytes(),
            &4u32.to_le_bytes(),
            &0xdba8_0bb2u32.to_le_bytes(), // CRC32 of "body"
            b"body",
        ]
        .concat();
        assert_eq!(crc32fast::hash(b"body"), 0xdba8_0bb2);
        assert_eq!(sealed, expected);
        let opened = open(&KIND, &sealed).unwrap();
        assert_eq!((opened.version, opened.body), (2, b"body".as_slice()));
        assert_eq!(opened.crc, 0xdba8_0bb2);
    }

    #[test]
    fn an_earlier_unsized_version_is_read_and_an_unknown_one_refused() {
        let old = [
            b"FERRYTST".as_slice(),
            &1u32.to_le_bytes(),
            &crc32fast::hash(b"old body").to_le_bytes(),
            b"old body",
        ]
        .concat();
        let opened = open(&KIND, &old).unwrap();
        assert_eq!((opened.version, opened.body), (1, b"old body".as_slice()));

        let mut newer = seal(&KIND, b"x");
        newer[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            open(&KIND, &newer),
            Err(EnvelopeError::Version {
                what: "test file",
                found: 3,
                reads: 2
            })
        );
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let sealed = seal(&KIND, b"some body bytes");
        assert!(matches!(
            open(&KIND, &sealed[..sealed.len() - 1]),
            Err(EnvelopeError::Length { .. })
        ));
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(matches!(
            open(&KIND, &longer),
            Err(EnvelopeError::Length { .. })
        ));
        for at in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            assert!(open(&KIND, &bad).is_err(), "flipped byte {at}");
        }
        for len in 0..HEADER_LEN {
            assert!(open(&KIND, &sealed[..len]).is_err(), "cut to {len}");
        }
        let other = Kind {
            magic: *b"FERRYOTH",
            ..KIND
        };
        assert_eq!(
            open(&other, &sealed),
            Err(EnvelopeError::NotThisKind { what: "test file" })
        );
    }
}
