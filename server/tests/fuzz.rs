//! The server's fuzz targets (`ferry_server::fuzzing`) on the stable
//! toolchain, as `replication/tests/fuzz.rs` runs the others: committed
//! corpus, seeds, mutations and random inputs.

use std::path::Path;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_target_holds_its_property_over_its_corpus_and_mutations() {
    let seed = env("FERRY_FUZZ_SEED", 0x5eed_f00d);
    let rounds = env("FERRY_FUZZ_ROUNDS", 50_000) as usize;
    let seeds = ferry_server::fuzzing::seeds();
    for (name, target) in ferry_server::fuzzing::TARGETS {
        let extra = seeds
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, b)| b.clone());
        if let Err(message) = ferry_replication::fuzzing::check(
            &root().join("fuzz/corpus"),
            &root().join("target/fuzz-failures"),
            (name, *target),
            extra,
            rounds,
            seed,
        ) {
            panic!("{message}");
        }
    }
}

/// The committed corpus holds every seed of this release, so that
/// cargo-fuzz campaigns start from them. `FERRY_WRITE_CORPUS=1` adds the
/// missing ones (commit them).
#[test]
fn the_corpus_holds_every_seed() {
    let write = std::env::var_os("FERRY_WRITE_CORPUS").is_some();
    let missing = ferry_replication::fuzzing::seeds_in_corpus(
        &root().join("fuzz/corpus"),
        ferry_server::fuzzing::seeds(),
        write,
    )
    .unwrap();
    assert!(
        write || missing.is_empty(),
        "seeds missing from the corpus (run with FERRY_WRITE_CORPUS=1 and commit them): {missing:?}"
    );
}
