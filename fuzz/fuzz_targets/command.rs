//! Fuzzes Raft command envelope with arbitrary bytes (property: see `ferry_replication::fuzzing::command`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::command(data);
});
