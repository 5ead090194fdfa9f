//! Ferry's embedded default: open a database in a temporary directory,
//! write, read back, survive a reopen, and print what happened.
//!
//! ```text
//! cargo run --release -p ferry-engine --example embedded
//! ```

use ferry_engine::{Db, Durability, Options, WriteBatch};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    println!("Opening a Ferry database in {}", dir.path().display());
    let options = Options {
        durability: Durability::Sync,
        ..Options::default()
    };
    let db = Db::open(dir.path(), options.clone())?;

    let started = Instant::now();
    let writers = 8;
    let per_writer = 2_000;
    std::thread::scope(|scope| {
        for writer in 0..writers {
            let db = &db;
            scope.spawn(move || {
                for i in 0..per_writer {
                    let key = format!("workflow/{writer:02}/step/{i:05}");
                    db.put(key, format!("done at step {i}")).expect("put");
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let stats = db.statistics();
    println!(
        "Wrote {} keys with fsync from {writers} threads in {:.2?}: {:.0} writes/s, {} fsyncs (group commit shared each fsync by {:.1} writes)",
        stats.writes,
        elapsed,
        stats.writes as f64 / elapsed.as_secs_f64(),
        stats.wal_syncs,
        stats.writes as f64 / stats.wal_syncs.max(1) as f64
    );

    let mut batch = WriteBatch::new();
    batch.put("workflow/00/status", "complete");
    batch.delete("workflow/00/step/00000");
    let sequence = db.write(batch)?;
    println!("Committed an atomic batch at sequence {sequence}");

    let snapshot = db.snapshot();
    db.put("workflow/00/status", "archived")?;
    println!(
        "Snapshot at {} still reads status = {:?}; the database now reads {:?}",
        snapshot.sequence(),
        String::from_utf8(snapshot.get("workflow/00/status")?.unwrap_or_default())?,
        String::from_utf8(db.get("workflow/00/status")?.unwrap_or_default())?
    );
    drop(snapshot);

    let steps = db.prefix("workflow/03/step/").count();
    println!("Prefix scan of workflow/03/step/: {steps} keys");
    let last = db
        .iter()
        .next_back()
        .transpose()?
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned());
    println!("Last key in the database: {last:?}");

    db.flush()?;
    db.close()?;
    let started = Instant::now();
    let db = Db::open(dir.path(), options)?;
    println!(
        "Reopened in {:.2?}; replayed {} WAL records; {} keys present",
        started.elapsed(),
        db.recovery_report().wal_records,
        db.iter().count()
    );
    let stats = db.statistics();
    println!("Tables per level after reopen: {:?}", stats.level_files);
    db.close()?;
    println!("Closed cleanly. (The temporary directory is removed on exit.)");
    Ok(())
}
