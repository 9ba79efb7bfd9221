//! The `sync-client` command-line program.
fn main() {}
