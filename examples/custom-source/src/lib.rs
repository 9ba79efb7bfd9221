//! # custom-source
//!
//! A custom source adapter: the host's **own SQLite database** as the
//! system of record of an org, behind the two traits every source
//! implements — [`sync_core::MetadataSource`] ([`HostDbSource`]) and
//! [`sync_core::SourceConnector`] ([`HostDbConnector`]).
//!
//! - **Metadata** comes from `PRAGMA table_info` of the tables the adopter
//!   offers ([`TableSpec`]), typed by the declared column types
//!   ([`attribute_type`]).
//! - **Change tracking** is a database-wide version counter, a `version`
//!   column on every tracked table and a `deleted(entity, id, version)`
//!   table, kept by triggers ([`install_change_tracking`]); the host's
//!   retention job forgets old deletes ([`purge_deletes_through`]), after
//!   which older tokens are `ResyncRequired`.
//! - **The feed** pages by version: the token is the last version delivered.
//! - **Write-back** inserts, updates and deletes rows, with `Conflict` when
//!   the row's state refuses the change and `Forbidden` for read-only tables.
//! - [`checks`] holds the contract of a source as conformance-style check
//!   functions and the [`source_checks!`] macro, independent of SQLite, for
//!   adopters to run against their own adapters.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use custom_source::{HostDbSource, TableSpec, install_change_tracking};
//! use sync_core::{EntityName, MetadataSource};
//!
//! let mut db = rusqlite::Connection::open_in_memory().unwrap();
//! db.execute_batch(
//!     "CREATE TABLE customer (customerid TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT);
//!      INSERT INTO customer VALUES ('c1', 'Contoso', 'alice');",
//! ).unwrap();
//! let customer = EntityName::new("customer").unwrap();
//! install_change_tracking(&mut db, &[customer.clone()]).unwrap();
//!
//! let source = HostDbSource::from_connection(db, vec![TableSpec::writable("customer").unwrap()]).unwrap();
//! let page = source.changes(&customer, None, 100).await.unwrap();
//! assert_eq!(page.upserts.len(), 1);
//! assert!(!page.more);
//! # });
//! ```

pub mod checks;
mod metadata;
mod source;
mod sqlite_error;
mod tracking;
mod values;

pub use metadata::{TableSpec, VERSION_COLUMN, attribute_type, read_metadata};
pub use source::{HostDbConnector, HostDbSource};
pub use tracking::{current_version, install_change_tracking, purge_deletes_through};

/// Re-exports for [`source_checks!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use tokio;
}
