//! Fuzzes backup checkpoint records with arbitrary bytes (property: see `ferry_replication::fuzzing::backup_record`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::backup_record(data);
});
