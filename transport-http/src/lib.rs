//! # transport-http
//!
//! The HTTP face of offline-sync.
//!
//! - **Router** ([`router`], feature `server`): the sync endpoints
//!   (`profile`, `pull` with live mode, `push`) and the admin endpoints of a
//!   [`sync_core::SyncService`] under `/v1`, with org routing by path or
//!   `{org}.<base domain>` host and org-directory redirects, `/healthz`,
//!   `/readyz`, Prometheus `/metrics`, the [`openapi`] document, request
//!   timeouts and response compression — an `axum::Router` for a host to
//!   mount, holding no global state.
//! - **Serving** ([`serve`], feature `serve`): bind, serve with graceful
//!   shutdown, and TLS with rustls from PEM files, for binaries.
//! - **Authentication** ([`JwtAuthenticator`], feature `server`): bearer JWTs
//!   with one pinned algorithm — HS256 with a shared secret, RS256 / ES256
//!   with a public key or a JWKS (inline, file, or URL fetched over rustls and
//!   cached by `kid`) — checked for `exp`, `nbf`, `iss` and `aud`, and turned
//!   into a [`sync_core::Principal`]. [`DevToken`] mints HS256 tokens for tests
//!   and demos.
//! - **Errors as problems** ([`ApiError`], [`ApiJson`], feature `server`):
//!   every [`sync_core::Error`] becomes an RFC 9457 `application/problem+json`
//!   response with a stable `type` per kind ([`problem_type`]); malformed,
//!   oversized or mistyped request bodies become such problems too.
//! - **Client** ([`HttpSyncTransport`], feature `client`): the
//!   [`sync_core::SyncTransport`] over HTTP(S) with rustls, decoding problems
//!   back into errors of the same kind, retrying transient failures with
//!   jittered exponential backoff and honouring `Retry-After`.
//! - **Configuration** ([`HttpConfig`], feature `server`): body limit,
//!   timeouts, live-pull waits, `{org}.<base domain>` host routing.
//!
//! A service over the in-memory store, served on a loopback port, and a
//! device syncing with it over HTTP:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use sync_core::memory::{MemoryConnector, MemoryQueue, MemoryStagingStore};
//! use sync_core::protocol::PullRequest;
//! use sync_core::*;
//! use transport_http::{DevToken, HttpConfig, HttpSyncTransport, HttpTransportConfig, JwtAuthenticator};
//!
//! // An org with one entity and a profile for the role `rep`.
//! let store = Arc::new(MemoryStagingStore::new());
//! let org = OrgId::new("contoso").unwrap();
//! store.create_org(&OrgConfig::new(org.clone(), MemoryConnector::config("crm"))).await.unwrap();
//! let col = |s: &str| ColumnName::new(s).unwrap();
//! let account = EntityMetadata::new(EntityName::new("account").unwrap(), col("accountid"), vec![
//!     Attribute::new(col("accountid"), AttributeType::String),
//!     Attribute::new(col("owner"), AttributeType::String),
//! ]).unwrap();
//! let staging = store.org(&org).await.unwrap();
//! staging.apply_schema(&account).await.unwrap();
//! staging.put_profile(&Profile {
//!     name: ProfileName::new("sales").unwrap(),
//!     roles: ["rep".into()].into(),
//!     items: vec![ProfileItem::new(account.name.clone(), "owner eq @user.id")],
//! }).await.unwrap();
//! let row = Row::new(RowId::new("a1").unwrap(), [(col("owner"), Value::from("alice"))]);
//! staging.apply_changes(&account.name, ChangePage { upserts: vec![row], ..Default::default() }).await.unwrap();
//!
//! // The router, served on a free port.
//! let service = SyncService::builder(store, Arc::new(MemoryQueue::new()), Arc::new(MemoryConnector::new()), b"cursor key").build();
//! let secret = b"change me: a secret of 32 bytes or more".to_vec();
//! let auth = Arc::new(JwtAuthenticator::hs256(secret.clone()).unwrap());
//! let app = transport_http::router(service, auth, HttpConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let url = format!("http://{}", listener.local_addr().unwrap());
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! // A device pulls its rows.
//! let token = DevToken::new("alice", &org).with_role("rep").sign_hs256(&secret).unwrap();
//! let device = HttpSyncTransport::with_token(HttpTransportConfig::new(url, org), token).unwrap();
//! let page = device.pull(&PullRequest::default()).await.unwrap();
//! assert_eq!(page.batches[0].puts.len(), 1);
//! assert!(!page.has_more);
//! # });
//! ```
//!
//! Authentication and problem responses on their own:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use axum::response::IntoResponse;
//! use sync_core::{Authenticator, Error, OrgId};
//! use transport_http::{ApiError, DevToken, JwtAuthenticator, problem_type};
//!
//! // Authenticate a bearer token.
//! let secret = b"change me: a secret of 32 bytes or more".to_vec();
//! let auth = JwtAuthenticator::hs256(secret.clone()).unwrap();
//! let org = OrgId::new("contoso").unwrap();
//! let token = DevToken::new("alice", &org).with_role("sales").sign_hs256(&secret).unwrap();
//! let principal = auth.authenticate(&token).await.unwrap();
//! assert_eq!((principal.user_id.as_str(), principal.org.as_str()), ("alice", "contoso"));
//!
//! // A forged token is refused, saying why.
//! let forged = DevToken::new("mallory", &org).sign_hs256(b"not the secret, but long enough!!").unwrap();
//! let error = auth.authenticate(&forged).await.unwrap_err();
//! assert!(error.to_string().contains("bad signature"));
//!
//! // Errors become problem responses.
//! let response = ApiError::from(Error::resync("the cursor is too old")).into_response();
//! assert_eq!(response.status(), 410);
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! assert_eq!(problem_type(error.kind()), "https://offline-sync.dev/problems/unauthenticated");
//! # });
//! ```
//!
//! ## Features
//! - `client` (default): [`HttpSyncTransport`] and its HTTP client.
//! - `server` (default; implies `client`, which fetches JWKS URLs):
//!   [`router`], [`JwtAuthenticator`], [`ApiError`], [`ApiJson`],
//!   [`Authenticated`], [`HttpConfig`], [`openapi`].
//! - `serve` (default; implies `server`): the [`serve`] helpers
//!   (axum-server with rustls for TLS).
//!
//! A device app that only syncs can use `default-features = false,
//! features = ["client"]` and leave axum out.
//!
//! TLS uses rustls with the aws-lc-rs provider, named explicitly, so no
//! process-wide default provider has to be installed.

#[cfg(feature = "server")]
mod api_error;
#[cfg(feature = "server")]
mod bearer;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "server")]
mod config;
#[cfg(feature = "server")]
mod jwt;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
pub mod openapi;
pub mod problem;
#[cfg(feature = "server")]
mod router;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "client")]
mod transport;

#[cfg(feature = "server")]
pub use api_error::{ApiError, ApiJson, BodyLimit, decode_request_body};
#[cfg(feature = "server")]
pub use bearer::{Authenticated, bearer_token};
#[cfg(feature = "client")]
pub use client::TlsRoots;
#[cfg(feature = "server")]
pub use config::{HttpConfig, MetricsAccess};
#[cfg(feature = "server")]
pub use jwt::{DevToken, JwksUrl, JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKeys, MIN_SECRET_LEN};
pub use problem::{PROBLEM_JSON, PROBLEM_TYPE_BASE, Problem, error_from_response, problem_type, status_of};
#[cfg(feature = "server")]
pub use router::{route_table, router};
#[cfg(feature = "client")]
pub use transport::{HttpSyncTransport, HttpTransportConfig, RetryPolicy, TokenFn, TokenProvider, token_fn};
