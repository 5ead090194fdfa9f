//! Fuzzes KV.Batch request messages with arbitrary bytes (property: see `ferry_server::fuzzing::batch_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_server::fuzzing::batch_request(data);
});
