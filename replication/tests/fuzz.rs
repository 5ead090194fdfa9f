//! Every fuzz target of `ferry_replication::fuzzing` and
//! `ferry_engine::fuzzing` on the stable
//! toolchain: its committed corpus (`fuzz/corpus/<target>/`), this
//! release's seeds, and a bounded number of mutations and random inputs.
//! The long, coverage-guided runs are `cargo fuzz` (see `fuzz/README.md`).
//!
//! A failure leaves the input in `target/fuzz-failures/`; once fixed, it
//! goes into the target's corpus as a regression.
//! `FERRY_FUZZ_SEED=N` picks other mutations, `FERRY_FUZZ_ROUNDS=N` more.

use ferry_replication::fuzzing;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The command fixture of release 0.2's envelope (one hex command a line).
fn command_fixture() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/commands-envelope-1.hex"),
    )
    .unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn every_target_holds_its_property_over_its_corpus_and_mutations() {
    let seed = env("FERRY_FUZZ_SEED", 0x5eed_f00d);
    let rounds = env("FERRY_FUZZ_ROUNDS", 50_000) as usize;
    let mut seeds = fuzzing::seeds();
    seeds.extend(ferry_engine::fuzzing::seeds());
    let targets = fuzzing::TARGETS
        .iter()
        .chain(ferry_engine::fuzzing::TARGETS);
    for (name, target) in targets {
        let mut extra: Vec<Vec<u8>> = seeds
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .collect();
        if *name == "command" {
            extra.extend(command_fixture());
        }
        // Reading a Parquet part costs a hundred times a record's decode.
        let rounds = if *name == "parquet_part" {
            rounds / 10
        } else {
            rounds
        };
        let started = Instant::now();
        match fuzzing::check(
            &root().join("fuzz/corpus"),
            &root().join("target/fuzz-failures"),
            (name, *target),
            extra,
            rounds,
            seed,
        ) {
            Ok(inputs) => eprintln!(
                "{name}: {inputs} inputs, {rounds} mutations, {} random, {:?}",
                rounds / 4,
                started.elapsed()
            ),
            Err(message) => panic!("{message}"),
        }
    }
}

/// The committed corpus holds every seed of this release, so that
/// cargo-fuzz campaigns start from them. `FERRY_WRITE_CORPUS=1` adds the
/// missing ones (commit them).
#[test]
fn the_corpus_holds_every_seed() {
    let write = std::env::var_os("FERRY_WRITE_CORPUS").is_some();
    let missing = fuzzing::seeds_in_corpus(
        &root().join("fuzz/corpus"),
        fuzzing::seeds()
            .into_iter()
            .chain(ferry_engine::fuzzing::seeds())
            .collect(),
        write,
    )
    .unwrap();
    assert!(
        write || missing.is_empty(),
        "seeds missing from the corpus (run with FERRY_WRITE_CORPUS=1 and commit them): {missing:?}"
    );
}
