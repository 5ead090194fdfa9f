//! Fuzzes node-to-node RaftMessage and its postcard payloads with arbitrary bytes (property: see `ferry_replication::fuzzing::raft_message`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::raft_message(data);
});
