//! Fuzzes auth tokens with arbitrary bytes (property: see `ferry_server::fuzzing::token`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_server::fuzzing::token(data);
});
