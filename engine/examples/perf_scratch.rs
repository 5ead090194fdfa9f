use ferry_engine::{Db, Durability, Options};
use std::time::Instant;
fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in("/tmp/perf").unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .unwrap();
    let mut x: u64 = 88172645463325252;
    let mut keys: Vec<u64> = (0..n).collect();
    for i in (1..keys.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        keys.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let value = vec![7u8; 100];
    let t = Instant::now();
    for &k in &keys {
        db.put(format!("{k:016}"), &value).unwrap();
    }
    let e = t.elapsed();
    eprintln!("fillrandom {:.0} ops/s", n as f64 / e.as_secs_f64());
    eprintln!("{:?}", db.statistics());
    if std::env::var("ONLY_FILL").is_ok() {
        return;
    }
    let t = Instant::now();
    for &k in &keys {
        assert!(db.get(format!("{k:016}")).unwrap().is_some());
    }
    let e = t.elapsed();
    eprintln!("readrandom {:.0} ops/s", n as f64 / e.as_secs_f64());
    let t = Instant::now();
    let c = db.iter().count();
    let e = t.elapsed();
    eprintln!("readseq {:.0} ops/s ({c})", c as f64 / e.as_secs_f64());
    db.flush().unwrap();
    let t = Instant::now();
    for &k in &keys {
        assert!(db.get(format!("{k:016}")).unwrap().is_some());
    }
    let e = t.elapsed();
    eprintln!(
        "readrandom after flush {:.0} ops/s",
        n as f64 / e.as_secs_f64()
    );
    eprintln!("{:?}", db.statistics());
}
