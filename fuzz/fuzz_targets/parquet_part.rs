//! Fuzzes the Parquet part reader of columnar imports with arbitrary bytes
//! (property: see `ferry_engine::fuzzing::parquet_part`).
//!
//! The parquet crate panics on some damaged files; Ferry's reader catches
//! those panics and reports an error. libFuzzer's panic hook would abort on
//! them even so, so this target replaces it with a silent one: a panic that
//! escapes the reader still reaches libfuzzer-sys's own catch and is a crash.
#![no_main]

static QUIET: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    ferry_engine::fuzzing::parquet_part(data);
});
