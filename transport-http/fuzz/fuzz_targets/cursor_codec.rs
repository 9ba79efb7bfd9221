//! The cursor codec: arbitrary text never panics and never verifies;
//! cursors built from the input round-trip and reject tampering.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    transport_http_fuzz::harness::cursor_codec(data);
});
