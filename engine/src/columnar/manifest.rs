//! The `EXPORT` file of a Parquet export (format in the module docs).

use crate::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

/// Name of the export's summary file.
pub const EXPORT_FILE: &str = "EXPORT";

/// One Parquet file of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPart {
    /// File name inside the export directory.
    pub name: String,
    /// Rows in the file.
    pub rows: u64,
    /// Content checksum of the file's rows.
    pub checksum: u64,
}

/// The decoded `EXPORT` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportManifest {
    /// Sequence of the exported snapshot.
    pub sequence: u64,
    /// Rows in all parts.
    pub rows: u64,
    /// Content checksum of all rows, in key order.
    pub checksum: u64,
    /// The parts in key order.
    pub parts: Vec<ExportPart>,
}

impl ExportManifest {
    /// The file's text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "ferry-export 1");
        let _ = writeln!(text, "sequence {}", self.sequence);
        let _ = writeln!(text, "rows {}", self.rows);
        let _ = writeln!(text, "checksum {:016x}", self.checksum);
        for part in &self.parts {
            let _ = writeln!(
                text,
                "part {} {} {:016x}",
                part.name, part.rows, part.checksum
            );
        }
        let crc = crc32fast::hash(text.as_bytes());
        let _ = writeln!(text, "crc {crc:08x}");
        text
    }

    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: &str| Error::corruption(path, 0, format!("EXPORT file: {reason}"));
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let body_end = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
        let (body, last) = text.split_at(body_end);
        let crc = last
            .trim()
            .strip_prefix("crc ")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| bad("missing crc line"))?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err(bad("checksum mismatch"));
        }
        let mut lines = body.lines();
        if lines.next() != Some("ferry-export 1") {
            return Err(bad("unknown header or version"));
        }
        let mut field = |name: &str| -> Result<String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("missing {name}")))
        };
        let number = |text: String, what: &str| text.parse::<u64>().map_err(|_| bad(what));
        let hex = |text: &str, what: &str| u64::from_str_radix(text, 16).map_err(|_| bad(what));
        let sequence = number(field("sequence")?, "sequence")?;
        let rows = number(field("rows")?, "rows")?;
        let checksum = hex(&field("checksum")?, "checksum")?;
        let mut parts = Vec::new();
        for line in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            let ["part", name, part_rows, part_checksum] = fields.as_slice() else {
                return Err(bad("malformed part line"));
            };
            if crate::fs::check_file_name(name).is_err() || !name.ends_with(".parquet") {
                return Err(bad("part name outside the export"));
            }
            parts.push(ExportPart {
                name: (*name).to_owned(),
                rows: part_rows.parse().map_err(|_| bad("part rows"))?,
                checksum: hex(part_checksum, "part checksum")?,
            });
        }
        Ok(ExportManifest {
            sequence,
            rows,
            checksum,
            parts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let manifest = ExportManifest {
            sequence: 42,
            rows: 3,
            checksum: 0xabc,
            parts: vec![ExportPart {
                name: "part-000000.parquet".into(),
                rows: 3,
                checksum: 0xabc,
            }],
        };
        let text = manifest.encode();
        let path = Path::new("EXPORT");
        assert_eq!(
            ExportManifest::decode(text.as_bytes(), path).unwrap(),
            manifest
        );
        let damaged = text.replace("rows 3", "rows 4");
        assert!(ExportManifest::decode(damaged.as_bytes(), path).is_err());
        assert!(ExportManifest::decode(b"", path).is_err());
        assert!(ExportManifest::decode(&[0xff, 0xfe], path).is_err());
    }
}
