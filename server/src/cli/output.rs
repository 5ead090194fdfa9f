//! How the client commands print: tables, JSON, times, and the report of
//! a data directory made into a new cluster.

use super::exit;
use ferry_client::pb;
use serde_json::json;
use std::io::Write;

/// Parses `--to-time`: RFC 3339 or Unix milliseconds.
pub fn parse_time_ms(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{text:?} is neither RFC 3339 nor Unix milliseconds: {e}"))
        .and_then(|t| {
            u64::try_from(t.timestamp_millis()).map_err(|_| format!("{text:?} is before 1970"))
        })
}

pub(super) fn time_text(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || format!("{ms} ms"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}

pub(super) fn split_pair(text: &str) -> Result<(String, String), i32> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| {
            eprintln!("error: {text:?} is not KEY=VALUE");
            exit::USAGE
        })
}

pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(super) fn kv_json(kv: &pb::KeyValue) -> serde_json::Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    );
    for row in rows {
        let _ = writeln!(out, "{}", line(row.clone()));
    }
}

pub(super) fn print_members(
    common: &super::Common,
    members: &[pb::Member],
    extra: serde_json::Value,
) {
    if common.json {
        let members: Vec<_> = members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "role": m.role, "voter": m.voter, "raft_addr": m.raft_addr,
                    "client_addr": m.client_addr, "matched_index": m.matched_index, "lag": m.lag,
                    "lag_ms": m.lag_ms, "never_contacted": m.never_contacted,
                })
            })
            .collect();
        let mut value = extra;
        value["members"] = serde_json::Value::Array(members);
        println!("{value}");
        return;
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.role.clone(),
                m.client_addr.clone(),
                m.raft_addr.clone(),
                m.matched_index.to_string(),
                m.lag.to_string(),
                match m.lag_ms {
                    _ if m.never_contacted => "never connected".to_owned(),
                    Some(ms) => ms.to_string(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    print_table(
        &["ID", "ROLE", "CLIENT", "RAFT", "MATCHED", "LAG", "LAG_MS"],
        &rows,
    );
}

/// Reports a data directory made into a new single-node cluster (by
/// `cluster recover` or `snapshot restore`) and how to start it.
pub(super) fn report_new_cluster(
    common: &super::Common,
    recovered: std::io::Result<ferry_replication::recovery::Recovered>,
    data_dir: &std::path::Path,
    id: u64,
    raft_addr: &str,
    client_addr: &str,
) -> Result<i32, i32> {
    let recovered = recovered.map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILED
    })?;
    let index = recovered.applied.map_or(0, |l| l.index);
    if common.json {
        println!(
            "{}",
            json!({ "data_dir": data_dir.display().to_string(), "index": index })
        );
    } else {
        println!(
            "{} is a new single-node cluster at index {index}; start it with:\n  ferry serve --id {id} --data-dir {} --raft-addr {raft_addr} --client-addr {client_addr}",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(exit::OK)
}

/// A span such as `90s`, `30m`, `12h` or `7d` (a bare number is seconds),
/// in seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a span such as 30m, 12h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    number
        .checked_mul(scale)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?}: out of range"))
}
