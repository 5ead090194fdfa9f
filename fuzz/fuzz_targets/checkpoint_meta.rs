//! Fuzzes ferry-engine CHECKPOINT file with arbitrary bytes (property: see `ferry_engine::fuzzing::checkpoint_meta`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_engine::fuzzing::checkpoint_meta(data);
});
