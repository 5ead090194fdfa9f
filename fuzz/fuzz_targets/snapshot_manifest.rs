//! Fuzzes a snapshot's SNAPSHOT file with arbitrary bytes (property: see `ferry_replication::fuzzing::snapshot_manifest`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::snapshot_manifest(data);
});
