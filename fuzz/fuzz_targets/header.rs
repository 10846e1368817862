//! Fuzzes the mesh header codec (`meshd::proxy::header`): any bytes a peer sends inside the TLS
//! stream must decode to a value or a named error, never a panic, and what decodes re-encodes
//! to the same bytes. Run: `cargo +nightly fuzz run header` (or with RUSTC_BOOTSTRAP=1).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshd::proxy::header::fuzz(data);
});
