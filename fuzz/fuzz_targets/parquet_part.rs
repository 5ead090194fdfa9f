//! Fuzzes the Parquet part reader of columnar imports with arbitrary bytes
//! (property: see `ferry_engine::fuzzing::parquet_part`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_engine::fuzzing::parquet_part(data);
});
