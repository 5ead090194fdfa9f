//! Fuzzes snapshot transfer replies with arbitrary bytes (property: see `ferry_replication::fuzzing::snapshot_reply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::snapshot_reply(data);
});
