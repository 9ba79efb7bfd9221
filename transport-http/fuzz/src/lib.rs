//! The fuzz harnesses of transport-http, shared by the cargo-fuzz targets
//! and the seed replay (`cargo test --no-default-features` here, and
//! `transport-http/tests/fuzz_seeds.rs` in the workspace).

#[path = "harness.rs"]
pub mod harness;
