//! # sync-core
//!
//! The core of offline-sync, an embeddable mobile-offline sync server: the
//! domain types, the traits every outside part plugs in through
//! ([`MetadataSource`], [`SourceConnector`], [`StagingStore`],
//! [`OrgStaging`], [`WorkQueue`], [`SyncTransport`], [`Authenticator`],
//! [`ConflictResolver`]), the filter language and membership planning, the
//! sync protocol types, and (behind features) in-memory adapters, the
//! conformance suites every adapter runs, and mockall mocks.
//!
//! This crate depends on no database, HTTP library or adapter crate.
//!
//! ```
//! use sync_core::{Cursor, CursorCodec, EntityName, OrgId};
//!
//! // Identifiers are validated: nothing hostile reaches SQL.
//! assert!(EntityName::new("account").is_ok());
//! assert!(EntityName::new("account; drop table x").is_err());
//!
//! // Cursors are opaque, bound to an org and user, and tamper-evident.
//! let codec = CursorCodec::new("server secret");
//! let org = OrgId::new("contoso").unwrap();
//! let text = codec.encode(&Cursor::start(org.clone(), "alice")).unwrap();
//! assert!(codec.decode(&text, &org, "alice").is_ok());
//! assert!(codec.decode(&text, &org, "mallory").is_err());
//! ```
//!
//! ## Features
//! - `memory`: first-class in-memory adapters (store, queue, source).
//! - `conformance`: the conformance suites (check functions and macros).
//! - `mock`: mockall mocks of the traits (`MockStagingStore`, …).

pub mod auth;
pub mod conflict;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod cursor;
pub mod engine;
pub mod error;
pub mod filter;
pub mod ids;
pub mod inprocess;
pub mod journal;
#[cfg(feature = "memory")]
pub mod memory;
pub mod org;
pub mod partition;
pub mod principal;
pub mod profile;
pub mod protocol;
pub mod queue;
pub mod row;
pub mod schema;
pub mod service;
pub mod source;
pub mod staging;
pub mod transport;
pub mod value;

pub use auth::Authenticator;
pub use conflict::{ConflictContext, ConflictResolver, Resolution};
pub use cursor::{Cursor, CursorCodec};
pub use engine::{Provisioner, StagingSync, WorkerConfig, WorkerRunner, WorkerSet};
pub use error::{Error, ErrorKind, Result};
pub use filter::MembershipPlanner;
pub use ids::{
    ChangeToken, ColumnName, EntityName, ItemId, MutationId, OrgId, ProfileName, QueueName, RowId, Seq,
};
pub use inprocess::InProcessTransport;
pub use org::{OrgConfig, OrgSourceConfig, OrgStatus, ProvisioningEvent, SyncRunReport, SyncWorkItem};
pub use partition::{Checksum, MembershipOp, Partition, PartitionKey};
pub use principal::Principal;
pub use profile::{ConflictPolicy, Profile, ProfileItem};
pub use queue::{Delivery, Message, WorkQueue};
pub use row::{ChangePage, Mutation, MutationOp, PulledRow, Row, StagedRow};
pub use schema::{Attribute, AttributeType, EntityMetadata, RowChecker};
pub use service::{SyncConfig, SyncService};
pub use source::{MetadataSource, SourceConnector};
pub use staging::{OrgStaging, StagingStore};
pub use transport::SyncTransport;
pub use value::Value;

/// Re-exports for the conformance macros; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use tokio;
}
