//! Request bodies as the router decodes them: never a panic, and whatever
//! decodes survives a round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    transport_http_fuzz::harness::request_decoding(data);
});
