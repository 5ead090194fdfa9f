//! Fuzzes snapshot transfer frames and offer checks with arbitrary bytes (property: see `ferry_replication::fuzzing::snapshot_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_replication::fuzzing::snapshot_frame(data);
});
