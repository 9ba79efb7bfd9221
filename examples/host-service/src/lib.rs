//! # host-service
//!
//! How an **existing axum application** takes offline sync on board without
//! giving up its own routes, its own login scheme or its own process:
//!
//! - the host keeps its routes (`GET /`, `GET /api/hello`) and mounts the
//!   offline-sync router under `/sync` with `Router::nest`
//!   ([`app::host_router`]);
//! - devices authenticate with the host's **opaque API keys**, checked by a
//!   custom [`sync_core::Authenticator`] ([`api_keys::ApiKeyAuthenticator`]);
//!   the same authenticator guards the host's own API, so one key works for
//!   both;
//! - the provisioning and staging-sync workers run on the host's tokio
//!   runtime ([`sync_core::WorkerRunner`]) and are shut down with the HTTP
//!   server ([`run::RunningHost::shutdown`]);
//! - the staging store and the work queue are the SQLite adapters under the
//!   host's data directory, and the system of record is a small helpdesk held
//!   in a [`sync_core::memory::MemorySource`] ([`helpdesk`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), host_service::run::HostError> {
//! use host_service::run::{self, HostConfig};
//!
//! let grants = run::demo_grants();
//! let host = run::start(HostConfig::new("./data/host-service"), &grants).await?;
//! println!("listening on http://{}", host.addr());
//! transport_http::serve::shutdown_signal().await;
//! host.shutdown().await?;
//! # Ok(())
//! # }
//! ```

pub mod api_keys;
pub mod app;
pub mod helpdesk;
pub mod run;
