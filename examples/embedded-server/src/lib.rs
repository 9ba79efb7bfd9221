//! The embedded offline-sync server as a library: configuration, the demo
//! CRM and the wiring of store, queue, workers and HTTP endpoints. The
//! `embedded-server` binary is a thin `main` over [`setup::run`].
//!
//! ```
//! use embedded_server::demo;
//!
//! // The demo CRM is generated deterministically.
//! let source = demo::build(demo::DemoSize { accounts: 3 }).unwrap();
//! assert_eq!(source.rows("account").unwrap().len(), 3);
//! assert_eq!(source.rows("task").unwrap().len(), 12);
//! ```

pub mod config;
pub mod demo;
pub mod setup;
