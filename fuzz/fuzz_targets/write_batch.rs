//! Fuzzes the write_batch decoder of ferry-engine with arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_engine::fuzzing::write_batch(data);
});
