//! The server's fuzz targets (`ferry_server::fuzzing`) on the stable
//! toolchain, as `replication/tests/fuzz.rs` runs the replication ones:
//! committed corpus, seeds, mutations and random inputs.

use ferry_server::fuzzing;
use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_root().join(name))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_target_holds_its_property_over_its_corpus_and_mutations() {
    let seed = env("FERRY_FUZZ_SEED", 0x5eed_f00d);
    let rounds = env("FERRY_FUZZ_ROUNDS", 50_000) as usize;
    let seeds = fuzzing::seeds();
    for (name, target) in fuzzing::TARGETS {
        let mut inputs = corpus(name);
        assert!(
            !inputs.is_empty(),
            "no corpus for {name}: write it with \
             `cargo test -p ferry-server --test fuzz -- --ignored write_seed_corpus`"
        );
        inputs.extend(
            seeds
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, b)| b.clone()),
        );
        if let Err((input, message)) =
            ferry_replication::fuzzing::run(*target, &inputs, rounds, seed)
        {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}-{:08x}", crc32fast::hash(&input)));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "fuzz target {name} failed (seed {seed}): {message}\ninput saved as {}",
                path.display()
            );
        }
    }
}

/// Writes this release's seeds into the corpus (the files are committed).
#[test]
#[ignore]
fn write_seed_corpus() {
    for (name, bytes) in fuzzing::seeds() {
        let dir = corpus_root().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("seed-{:08x}", crc32fast::hash(&bytes))),
            bytes,
        )
        .unwrap();
    }
}
