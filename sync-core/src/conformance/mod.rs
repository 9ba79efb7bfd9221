//! The conformance suites (feature `conformance`): the contracts of
//! [`StagingStore`](crate::StagingStore) and [`WorkQueue`](crate::WorkQueue)
//! as async check functions, and macros that expand to one named test per
//! check, so every adapter — ours and a user's — runs the same suite.

/// The work queue conformance suite.
pub mod queue;
pub mod staging;
