//! Fuzzes the Raft log store's VOTE and PURGED files with arbitrary bytes (property: see `ferry_replication::fuzzing::raft_state_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::raft_state_file(data);
});
