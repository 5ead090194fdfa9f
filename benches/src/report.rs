//! Results of a suite: one row per system and workload, printed as aligned
//! text tables for people and written as flat JSON objects for tooling.

use serde::Serialize;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The engine every other engine is compared against in the ratio table.
const BASELINE: &str = "ferry";
/// Ferry with TLS and auth on, against which the peers running with TLS
/// (`-tls` systems) are compared in a second ratio table.
const SECURE_BASELINE: &str = "ferry-tls";
/// Ferry driven through etcd's client, compared with etcd driven by the
/// same client in a third ratio table.
const ETCD_CLIENT_BASELINE: &str = "ferry-etcd-client";

/// The result of one workload on one system (a storage engine, a cluster,
/// a floor).
///
/// Serialized flat (no nesting): `system`, `workload`, then every figure
/// under its own name, which carries its unit (`ops_per_sec`, `p99_us`,
/// `seconds`, `bytes`…), so that a JSON array of rows loads directly into a
/// dataframe or a spreadsheet.
#[derive(Debug, Clone)]
pub struct Row {
    pub system: String,
    pub workload: String,
    pub figures: Vec<(&'static str, f64)>,
}

impl Row {
    pub fn new(system: &str, workload: &str) -> Self {
        Row {
            system: system.to_owned(),
            workload: workload.to_owned(),
            figures: Vec::new(),
        }
    }

    /// Adds (or replaces) a figure.
    pub fn with(mut self, name: &'static str, value: f64) -> Self {
        self.figures.retain(|(n, _)| *n != name);
        self.figures.push((name, value));
        self
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

impl Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2 + self.figures.len()))?;
        map.serialize_entry("system", &self.system)?;
        map.serialize_entry("workload", &self.workload)?;
        for (name, value) in &self.figures {
            // Counts are whole numbers; keep them integers in JSON.
            if value.fract() == 0.0 && value.abs() < 9.0e15 {
                map.serialize_entry(name, &(*value as i64))?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// Prints every row as one line of an aligned table on stdout; the columns
/// are every figure name, in order of first appearance.
pub fn print_table(rows: &[Row]) {
    let names = distinct(
        rows.iter()
            .flat_map(|row| row.figures.iter().map(|(n, _)| *n)),
    );
    let mut header = cells(&["system", "workload"]);
    header.extend(names.iter().map(|n| (*n).to_owned()));
    let mut lines = vec![header];
    lines.extend(rows.iter().map(|row| {
        let mut line = vec![row.system.clone(), row.workload.clone()];
        line.extend(names.iter().map(|name| match row.get(name) {
            None => "-".to_owned(),
            Some(value) if value.abs() >= 1000.0 || value.fract() == 0.0 => format!("{value:.0}"),
            Some(value) => format!("{value:.2}"),
        }));
        line
    }));
    print_aligned(&lines, 2);
}

/// Figures that measure a rate (higher is better), in the order a ratio
/// takes the first both systems measured.
const THROUGHPUTS: &[&str] = &["ops_per_sec", "events_per_sec", "rows_per_sec"];
/// Figures that measure a cost (lower is better).
const COSTS: &[&str] = &["bytes_per_change", "seconds"];

/// Prints, for each workload (and client count, where rows have one),
/// Ferry's throughput divided by each peer's (above 1.0: Ferry is faster),
/// for cases measured by a cost the peer's divided by Ferry's (above 1.0:
/// Ferry spends less)
/// and, where rows have `p99_us`, Ferry's p99 latency divided by the
/// peer's (below 1.0: Ferry is faster). Skipped unless Ferry and a peer
/// both ran.
///
/// Where `ferry-tls` ran, a second table compares it with each peer that
/// also ran with TLS (the first shows `ferry/ferry-tls`: what TLS costs).
pub fn print_ratios(rows: &[Row]) {
    let engines = distinct(rows.iter().map(|row| row.system.as_str()));
    let peers: Vec<&str> = engines.iter().copied().filter(|&e| e != BASELINE).collect();
    print_ratios_against(rows, BASELINE, &peers);
    let secure_peers: Vec<&str> = engines
        .iter()
        .copied()
        .filter(|&e| e != SECURE_BASELINE && e.ends_with("-tls"))
        .collect();
    print_ratios_against(rows, SECURE_BASELINE, &secure_peers);
    if engines.contains(&"etcd") {
        print_ratios_against(rows, ETCD_CLIENT_BASELINE, &["etcd"]);
    }
}

fn print_ratios_against(rows: &[Row], baseline: &str, peers: &[&str]) {
    if peers.is_empty() || !rows.iter().any(|row| row.system == baseline) {
        return;
    }
    let case = |row: &Row| match row.get("clients") {
        Some(clients) => format!("{} x{clients}", row.workload),
        None => row.workload.clone(),
    };
    let cases: Vec<String> = distinct(rows.iter().map(|row| row.workload.as_str()))
        .into_iter()
        .flat_map(|workload| {
            let mut of_workload: Vec<String> = Vec::new();
            for row in rows.iter().filter(|row| row.workload == workload) {
                let name = case(row);
                if !of_workload.contains(&name) {
                    of_workload.push(name);
                }
            }
            of_workload
        })
        .collect();
    let figure = |engine: &str, name: &str, figure: &str| {
        rows.iter()
            .find(|row| row.system == engine && case(row) == name)
            .and_then(|row| row.get(figure))
    };
    // A case the baseline did not measure, or a peer that measured none
    // of the baseline's cases (the cluster suite's `ferry-engine` fsync
    // floor), would only add empty rows and columns.
    let measured = |engine: &str, name: &String| {
        rows.iter()
            .any(|row| row.system == engine && &case(row) == name)
    };
    let cases: Vec<String> = cases
        .into_iter()
        .filter(|name| measured(baseline, name))
        .collect();
    let peers: Vec<&str> = peers
        .iter()
        .copied()
        .filter(|&peer| cases.iter().any(|name| measured(peer, name)))
        .collect();
    if peers.is_empty() {
        return;
    }
    let with_p99 = rows.iter().any(|row| row.get("p99_us").is_some());
    // Cases measured by a cost (bytes, seconds) rather than a rate.
    let with_cost = rows.iter().any(|row| {
        THROUGHPUTS.iter().all(|f| row.get(f).is_none())
            && COSTS.iter().any(|f| row.get(f).is_some())
    });

    let mut header = vec!["workload".to_owned()];
    for peer in &peers {
        header.push(format!("ops {baseline}/{peer}"));
        if with_p99 {
            header.push(format!("p99 {baseline}/{peer}"));
        }
        if with_cost {
            header.push(format!("cost {peer}/{baseline}"));
        }
    }
    let mut lines = vec![header];
    let ratio = |ours: Option<f64>, theirs: Option<f64>| match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}", ours / theirs),
        _ => "-".to_owned(),
    };
    // The first of `names` both engines measured for `case`.
    let both = |names: &[&str], peer: &str, case: &str| {
        names
            .iter()
            .find_map(|f| Some((figure(baseline, case, f)?, figure(peer, case, f)?)))
    };
    for name in &cases {
        let mut line = vec![name.clone()];
        for &peer in &peers {
            let rate = both(THROUGHPUTS, peer, name);
            line.push(ratio(rate.map(|r| r.0), rate.map(|r| r.1)));
            if with_p99 {
                line.push(ratio(
                    figure(baseline, name, "p99_us"),
                    figure(peer, name, "p99_us"),
                ));
            }
            if with_cost {
                let cost = if rate.is_some() {
                    None
                } else {
                    both(COSTS, peer, name)
                };
                line.push(ratio(cost.map(|c| c.1), cost.map(|c| c.0)));
            }
        }
        lines.push(line);
    }

    println!();
    print_aligned(&lines, 1);
}

/// Where a suite writes: the options every single-engine suite shares.
#[derive(Debug, clap::Args)]
pub struct Output {
    /// Also write the results to this file as a JSON array.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Parent directory for the suite's databases (default: the system's
    /// temporary directory); use it to pick the disk under test.
    #[arg(long, value_name = "PATH")]
    pub dir: Option<std::path::PathBuf>,
}

impl Output {
    /// A fresh temporary directory for the suite's databases, removed when dropped.
    pub fn work_dir(&self) -> tempfile::TempDir {
        match &self.dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
    }
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

/// Runs an async suite on a multi-threaded tokio runtime.
pub fn block_on<F: std::future::Future>(suite: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(suite)
}
