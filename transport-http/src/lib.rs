//! # transport-http
//!
//! The HTTP face of offline-sync.
//!
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
//!   [`JwtAuthenticator`], [`ApiError`], [`ApiJson`], [`Authenticated`],
//!   [`HttpConfig`].
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
pub mod problem;
#[cfg(feature = "client")]
mod transport;

#[cfg(feature = "server")]
pub use api_error::{ApiError, ApiJson, BodyLimit};
#[cfg(feature = "server")]
pub use bearer::{Authenticated, bearer_token};
#[cfg(feature = "client")]
pub use client::TlsRoots;
#[cfg(feature = "server")]
pub use config::HttpConfig;
#[cfg(feature = "server")]
pub use jwt::{DevToken, JwksUrl, JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKeys, MIN_SECRET_LEN};
pub use problem::{PROBLEM_JSON, PROBLEM_TYPE_BASE, Problem, error_from_response, problem_type, status_of};
#[cfg(feature = "client")]
pub use transport::{HttpSyncTransport, HttpTransportConfig, RetryPolicy, TokenFn, TokenProvider, token_fn};
