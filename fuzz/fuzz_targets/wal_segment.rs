//! Fuzzes the wal_segment decoder of ferry-engine with arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_engine::fuzzing::wal_segment(data);
});
