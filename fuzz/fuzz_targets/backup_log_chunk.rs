//! Fuzzes backup log chunks with arbitrary bytes (property: see `ferry_replication::fuzzing::backup_log_chunk`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::backup_log_chunk(data);
});
