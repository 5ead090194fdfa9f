//! Results of a suite: one row per engine and workload, printed as aligned
//! text tables for people and written as flat JSON objects for tooling.

use serde::Serialize;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The engine every other engine is compared against in the ratio table.
const BASELINE: &str = "ferry";

/// The result of one workload on one engine.
///
/// Serialized flat (no nesting) so that a JSON array of rows loads directly
/// into a dataframe or a spreadsheet.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub engine: String,
    pub workload: String,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// `(key + value bytes) * ops / seconds / 1e6`, for reads as well as writes.
    pub mb_per_sec: f64,
    /// Bytes written to disk per byte written by the user; only measured
    /// where an engine exposes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_amp: Option<f64>,
    /// Size of the database directory; only measured after some workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// Prints every row as one line of an aligned table on stdout.
pub fn print_table(rows: &[Row]) {
    let mut lines = vec![cells(&[
        "engine",
        "workload",
        "ops/s",
        "p50 us",
        "p99 us",
        "MB/s",
        "write amp",
        "disk MB",
    ])];
    lines.extend(rows.iter().map(|row| {
        vec![
            row.engine.clone(),
            row.workload.clone(),
            format!("{:.0}", row.ops_per_sec),
            format!("{:.1}", row.p50_us),
            format!("{:.1}", row.p99_us),
            format!("{:.1}", row.mb_per_sec),
            row.write_amp
                .map_or_else(|| "-".to_owned(), |w| format!("{w:.2}")),
            row.disk_bytes
                .map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6)),
        ]
    }));
    print_aligned(&lines, 2);
}

/// Prints, for each workload, Ferry's throughput divided by each peer's
/// (above 1.0: Ferry is faster). Skipped unless Ferry and a peer both ran.
pub fn print_ratios(rows: &[Row]) {
    let engines = distinct(rows.iter().map(|row| row.engine.as_str()));
    let peers: Vec<&str> = engines.into_iter().filter(|&e| e != BASELINE).collect();
    if peers.is_empty() || !rows.iter().any(|row| row.engine == BASELINE) {
        return;
    }
    let ops = |engine: &str, workload: &str| {
        rows.iter()
            .find(|row| row.engine == engine && row.workload == workload)
            .map(|row| row.ops_per_sec)
    };

    let mut header = vec!["workload".to_owned()];
    header.extend(peers.iter().map(|peer| format!("{BASELINE}/{peer}")));
    let mut lines = vec![header];
    for workload in distinct(rows.iter().map(|row| row.workload.as_str())) {
        let mut line = vec![workload.to_owned()];
        line.extend(peers.iter().map(|&peer| {
            match (ops(BASELINE, workload), ops(peer, workload)) {
                (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}", ours / theirs),
                _ => "-".to_owned(),
            }
        }));
        lines.push(line);
    }

    println!();
    print_aligned(&lines, 1);
}

/// Writes the rows as a pretty-printed JSON array of flat objects.
pub fn write_json(path: &Path, rows: &[Row]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    serde_json::to_writer_pretty(&mut out, rows)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn cells(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|&text| text.to_owned()).collect()
}

/// The items in order of first appearance, without repeats: the tables
/// follow the order the suite ran in rather than alphabetical order.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// Prints `lines` (the first one is the header) in columns: the first
/// `text_columns` left-aligned, the numeric rest right-aligned so digits line up.
fn print_aligned(lines: &[Vec<String>], text_columns: usize) {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for line in lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let render = |line: &[String]| {
        let padded: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, &width))| {
                if column < text_columns {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        padded.join("  ").trim_end().to_owned()
    };

    for (index, line) in lines.iter().enumerate() {
        println!("{}", render(line.as_slice()));
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|&width| "-".repeat(width)).collect();
            println!("{}", rule.join("  "));
        }
    }
}
