//! Kill test: a child process writes and reports each acknowledged key on
//! stdout; the parent SIGKILLs it at random moments and checks, after every
//! reopen, that each acknowledged write is present and the database is
//! consistent. It runs with `Sync` and with `Buffered`: both promise that a
//! process crash loses nothing acknowledged (a buffered write is in the
//! kernel's page cache, through the WAL's shared map, when it returns).
//!
//! The child is this same test binary, re-run with `FERRY_KILL_CHILD` set,
//! so the test needs nothing but itself.

use ferry_engine::{Db, Durability, Options};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "FERRY_KILL_CHILD";
/// `sync` or `buffered`: the child's durability.
const DURABILITY_ENV: &str = "FERRY_KILL_DURABILITY";

fn durability(name: &str) -> Durability {
    match name {
        "sync" => Durability::Sync,
        "buffered" => Durability::Buffered,
        other => panic!("unknown durability {other:?}"),
    }
}

fn options(durability: Durability) -> Options {
    Options {
        durability,
        // Small memtables and levels so kills also land in flushes and
        // compactions.
        write_buffer_bytes: 64 << 10,
        block_bytes: 1024,
        level0_compaction_trigger: 2,
        level1_max_bytes: 256 << 10,
        target_file_bytes: 64 << 10,
        ..Options::default()
    }
}

fn key(writer: u64, i: u64) -> Vec<u8> {
    format!("w{writer}/{i:010}").into_bytes()
}

fn value(writer: u64, i: u64) -> Vec<u8> {
    format!("{writer}:{i}:{}", "v".repeat((i % 97) as usize)).into_bytes()
}

/// The child: four writer threads, each writing its own keys in order and
/// printing `ack <writer> <i>` once `put` returned.
#[test]
fn kill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only meaningful when started by `sigkill_loses_no_acknowledged_write`.
    };
    let start: u64 = std::env::var("FERRY_KILL_START").unwrap().parse().unwrap();
    let durability = durability(&std::env::var(DURABILITY_ENV).unwrap());
    let db = Db::open(Path::new(&dir), options(durability)).expect("child open");
    let stdout = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|scope| {
        for writer in 0..4u64 {
            let (db, stdout) = (&db, &stdout);
            scope.spawn(move || {
                for i in start.. {
                    db.put(key(writer, i), value(writer, i)).expect("child put");
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ack {writer} {i}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    kill_cycles("sync", 20);
}

#[test]
fn sigkill_loses_no_acknowledged_buffered_write() {
    kill_cycles("buffered", 10);
}

/// `default_cycles` kill cycles of a child writing with `durability_name`
/// (`FERRY_KILL_CYCLES` overrides the count).
fn kill_cycles(durability_name: &str, default_cycles: u64) {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let cycles: u64 = std::env::var("FERRY_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cycles);
    let options = || options(durability(durability_name));
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // Highest acknowledged index per writer over all cycles; each cycle
    // starts its writers past every index used before.
    let mut acked: [Option<u64>; 4] = [None; 4];
    // The highest acknowledged key of every writer in every cycle so far:
    // with gap-free runs, their presence implies every earlier key's.
    let mut checkpoints: Vec<(u64, u64)> = Vec::new();
    let mut next_start = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(DURABILITY_ENV, durability_name)
            .env("FERRY_KILL_START", next_start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        // xorshift: a kill delay between 50 and 400 ms after the first ack.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(50 + seed % 350);
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
            lines
        });
        let started = Instant::now();
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut cycle_acks = 0;
        for line in &lines {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ack") {
                continue;
            }
            let (Some(writer), Some(i)) = (parts.next(), parts.next()) else {
                continue; // a line cut by the kill
            };
            let (Ok(writer), Ok(i)) = (writer.parse::<usize>(), i.parse::<u64>()) else {
                continue;
            };
            acked[writer] = Some(acked[writer].map_or(i, |a| a.max(i)));
            next_start = next_start.max(i + 1);
            cycle_acks += 1;
        }
        next_start += 1_000_000; // leave room: unacknowledged writes may have landed
        for (writer, highest) in acked.iter().enumerate() {
            if let Some(highest) = highest {
                checkpoints.push((writer as u64, *highest));
            }
        }

        let db = Db::open(dir.path(), options()).expect("reopen after SIGKILL");
        for &(writer, highest) in &checkpoints {
            let probe = db.get(key(writer, highest)).unwrap();
            assert_eq!(
                probe,
                Some(value(writer, highest)),
                "cycle {cycle}: writer {writer} key {highest} lost"
            );
        }
        // Consistency: every key present has the value its writer wrote,
        // and per writer and cycle the present keys form a gap-free run.
        let mut runs: std::collections::BTreeMap<(u64, u64), (u64, u64, u64)> = Default::default();
        for entry in db.iter() {
            let (k, v) = entry.expect("scan after SIGKILL");
            let text = String::from_utf8(k).unwrap();
            let (writer, i) = text[1..].split_once('/').unwrap();
            let (writer, i): (u64, u64) = (writer.parse().unwrap(), i.parse().unwrap());
            assert_eq!(v, value(writer, i), "value of {text}");
            let run = runs.entry((writer, i / 1_000_000)).or_insert((i, i, 0));
            run.0 = run.0.min(i);
            run.1 = run.1.max(i);
            run.2 += 1;
        }
        for ((writer, _), (low, high, count)) in &runs {
            assert_eq!(
                high - low + 1,
                *count,
                "writer {writer}: hole in [{low}, {high}]"
            );
        }
        eprintln!(
            "cycle {cycle}: killed after {:?}, {cycle_acks} acks, {} keys, report {:?}",
            started.elapsed(),
            runs.values().map(|r| r.2).sum::<u64>(),
            db.recovery_report()
        );
        db.close().unwrap();
    }
}
