//! First-class in-memory adapters (feature `memory`): a staging store, a
//! work queue and a scriptable source. Not mocks: they keep every contract
//! of their traits, pass the conformance suites, and back the tests of the
//! engine and the demo.

mod queue;
mod source;
mod staging;

pub use queue::MemoryQueue;
pub use source::{MemoryConnector, MemorySource, SourceOp};
pub use staging::MemoryStagingStore;
