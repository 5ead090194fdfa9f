//! Fuzzes the state machine's records with arbitrary bytes (property: see `ferry_replication::fuzzing::state_records`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::state_records(data);
});
