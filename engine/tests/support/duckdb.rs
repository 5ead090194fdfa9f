//! DuckDB, from PyPI, for tests that check Ferry's Parquet files with a
//! reader nobody here wrote. Installed on first use into
//! `target/python-site` (under a lock, so tests running at once install it
//! once). A test that needs it fails when it cannot be had; it never skips.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

fn site() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/python-site")
}

fn python() -> &'static str {
    ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("these tests need python3 (to run DuckDB from PyPI)")
}

fn importable(python: &str) -> bool {
    Command::new(python)
        .env("PYTHONPATH", site())
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure DuckDB is importable from [`site`]; returns the interpreter.
fn ensure() -> &'static str {
    let python = python();
    std::fs::create_dir_all(site()).unwrap();
    let lock = std::fs::File::create(site().join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns for the call.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !importable(python) {
        let installed = Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(site())
            .arg("duckdb")
            .output()
            .expect("running pip");
        assert!(
            installed.status.success() && importable(python),
            "could not install DuckDB from PyPI: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
    }
    python
}

/// Runs `sql` in DuckDB; returns its rows, each a list of columns as text
/// (NULL as `NULL`). Binary columns should be cast in the query (e.g.
/// `decode(key)` or `hex(value)`).
pub fn query(sql: &str) -> Vec<Vec<String>> {
    let python = ensure();
    let script = r#"
import sys, duckdb
for row in duckdb.sql(sys.argv[1]).fetchall():
    print("\t".join("NULL" if c is None else str(c) for c in row))
"#;
    let output = Command::new(python)
        .env("PYTHONPATH", site())
        .args(["-c", script, sql])
        .output()
        .expect("running DuckDB");
    assert!(
        output.status.success(),
        "DuckDB failed on {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}
