//! The router: the sync and admin endpoints of DESIGN.md §5 over a
//! [`SyncService`], with org routing, problem responses, timeouts, metrics
//! and compression.

mod admin;
mod directory;
mod extract;
mod middleware;
mod ops;
mod sync;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::handler::Handler;
use axum::routing::{MethodFilter, on};
use axum::{Extension, Router};
use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use sync_core::{Authenticator, Error, OrgId, Principal, SyncService};
use tower_http::compression::CompressionLayer;

use crate::api_error::ApiError;
use crate::bearer::bearer_token;
use crate::config::HttpConfig;
use crate::metrics::HttpMetrics;
use directory::DirectoryCache;
pub(crate) use middleware::Deadline;

/// The HTTP face of a [`SyncService`], for a host to mount or serve.
///
/// Routes (all errors are `application/problem+json`, see
/// [`problem_type`](crate::problem_type)):
///
/// | method and path | what |
/// | --- | --- |
/// | `GET /v1/orgs/{org}/sync/profile` | the caller's profile and schemas |
/// | `POST /v1/orgs/{org}/sync/pull` | changes after a cursor; `wait_ms` holds it open (live mode) |
/// | `POST /v1/orgs/{org}/sync/push` | uploads offline changes |
/// | `GET /v1/sync/profile`, `POST /v1/sync/pull`, `POST /v1/sync/push` | the same, for the org named by the host `{org}.<base_domain>` |
/// | `POST /v1/admin/orgs` | provision an org (an `OrgConfig`): 202 with the enqueue outcome |
/// | `GET /v1/admin/orgs` | every org staged here (operators) |
/// | `DELETE /v1/admin/orgs/{org}` | deprovision: 202 with the enqueue outcome |
/// | `GET /v1/admin/orgs/{org}/status` | tokens, row counts, last run, last error |
/// | `GET /v1/admin/orgs/{org}/profiles` | the org's profiles |
/// | `PUT`, `GET`, `DELETE /v1/admin/orgs/{org}/profiles/{name}` | one profile |
/// | `POST /v1/admin/orgs/{org}/sync-now` | make the staging sync due now (optional `{"entity": …}`): 202 |
/// | `PUT`, `DELETE /v1/admin/orgs/{org}/location` | the org directory entry (`{"base_url": …}`) |
/// | `GET /v1/admin/queues` | depths of the work queues |
/// | `GET /v1/admin/queues/{queue}/dead-letters?limit=` | dead letters of a queue |
/// | `GET /healthz` | the process is up |
/// | `GET /readyz` | the store and the queue answer |
/// | `GET /metrics` | Prometheus text |
/// | `GET /v1/openapi.json` | the OpenAPI 3.1 document of all of this |
///
/// **Org routing.** An org the org directory places on another deployment
/// gets `307` to that deployment's base URL with the same path (host-routed
/// requests get the `/v1/orgs/{org}/…` form), before authentication, as DNS
/// would route it. Then the bearer token is verified (401), a principal of
/// another org is refused (403), and an org not staged here is 404.
///
/// **Limits.** Bodies over [`HttpConfig::body_limit`] get 413; requests
/// slower than [`HttpConfig::request_timeout`] (live pulls: plus their wait)
/// get 503 with `Retry-After`; a live pull waits at most the smaller of
/// [`HttpConfig::max_wait`] and the service's `max_wait_ms`. Responses are
/// compressed (gzip, br, zstd) as `Accept-Encoding` asks, unless
/// [`HttpConfig::compression`] is off; [`HttpConfig::metrics`] says who may
/// read `/metrics`.
///
/// The router holds no global state and never owns the process: its
/// metrics registry is its own, and serving it is the host's business (or
/// see the `serve` feature).
pub fn router(service: SyncService, auth: Arc<dyn Authenticator>, config: HttpConfig) -> Router {
    if let Err(e) = config.validate() {
        // Used as given (a host may mean it); call `HttpConfig::validate`
        // first to refuse such a configuration.
        tracing::warn!(error = %e, "the HTTP configuration does not validate");
    }
    let metrics = match HttpMetrics::new() {
        Ok(metrics) => Some(metrics),
        Err(e) => {
            tracing::error!(error = %e, "metrics unavailable; /metrics will answer 500");
            None
        }
    };
    let openapi = match serde_json::to_vec(&crate::openapi::document()) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document did not serialize");
            Bytes::new()
        }
    };
    let body_limit = config.body_limit();
    let compression = config.compression;
    let state = AppState {
        shared: Arc::new(Shared {
            directory: DirectoryCache::new(config.directory_ttl),
            service,
            auth,
            config,
            metrics,
            openapi,
        }),
    };
    let app =
        routes().router.fallback(ops::unknown_route).method_not_allowed_fallback(ops::method_not_allowed);
    let app = if compression { app.layer(CompressionLayer::new()) } else { app };
    app.layer(Extension(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        .with_state(state)
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    service: SyncService,
    auth: Arc<dyn Authenticator>,
    config: HttpConfig,
    metrics: Option<HttpMetrics>,
    directory: DirectoryCache,
    openapi: Bytes,
}

impl FromRef<AppState> for Arc<dyn Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.shared.auth.clone()
    }
}

impl AppState {
    fn service(&self) -> &SyncService {
        &self.shared.service
    }

    fn config(&self) -> &HttpConfig {
        &self.shared.config
    }

    fn metrics(&self) -> Option<&HttpMetrics> {
        self.shared.metrics.as_ref()
    }

    fn metrics_access(&self) -> &crate::config::MetricsAccess {
        &self.shared.config.metrics
    }

    /// Verifies the request's bearer token.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let token = bearer_token(headers)?;
        Ok(self.shared.auth.authenticate(token).await?)
    }

    /// The base URL of the deployment that serves `org`, when the directory
    /// places it elsewhere.
    async fn directory_location(&self, org: &OrgId) -> Result<Option<Arc<str>>, Error> {
        self.shared.directory.location(self.shared.service.store().as_ref(), org).await
    }
}

/// The path and query of the request as the client sent it (before any
/// nesting by the host).
fn original_path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// Every route of the router, as (method, path template), and the router.
pub(crate) struct Routes {
    router: Router<AppState>,
    list: Vec<(Method, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Routes { router: Router::new(), list: Vec::new() }
    }

    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = match method {
            Method::GET => MethodFilter::GET,
            Method::POST => MethodFilter::POST,
            Method::PUT => MethodFilter::PUT,
            Method::DELETE => MethodFilter::DELETE,
            Method::PATCH => MethodFilter::PATCH,
            _ => MethodFilter::OPTIONS,
        };
        self.router = self.router.route(path, on(filter, handler));
        self.list.push((method, path));
        self
    }

    /// The (method, path template) pairs.
    pub(crate) fn list(&self) -> &[(Method, &'static str)] {
        &self.list
    }
}

/// Every route of [`router`], as (method, path template) — the same table
/// the router is built from, and the one the OpenAPI document is tested
/// against. Useful to configure a gateway in front of the server.
///
/// ```
/// let routes = transport_http::route_table();
/// assert!(routes.iter().any(|(m, p)| m == "POST" && *p == "/v1/orgs/{org}/sync/pull"));
/// ```
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().list().to_vec()
}

/// The route table: the one place routes are declared.
pub(crate) fn routes() -> Routes {
    Routes::new()
        .add(Method::GET, "/healthz", ops::healthz)
        .add(Method::GET, "/readyz", ops::readyz)
        .add(Method::GET, "/metrics", ops::metrics)
        .add(Method::GET, "/v1/openapi.json", ops::openapi)
        .add(Method::GET, "/v1/orgs/{org}/sync/profile", sync::profile_at)
        .add(Method::POST, "/v1/orgs/{org}/sync/pull", sync::pull_at)
        .add(Method::POST, "/v1/orgs/{org}/sync/push", sync::push_at)
        .add(Method::GET, "/v1/sync/profile", sync::profile_by_host)
        .add(Method::POST, "/v1/sync/pull", sync::pull_by_host)
        .add(Method::POST, "/v1/sync/push", sync::push_by_host)
        .add(Method::POST, "/v1/admin/orgs", admin::provision)
        .add(Method::GET, "/v1/admin/orgs", admin::orgs)
        .add(Method::DELETE, "/v1/admin/orgs/{org}", admin::deprovision)
        .add(Method::GET, "/v1/admin/orgs/{org}/status", admin::org_status)
        .add(Method::GET, "/v1/admin/orgs/{org}/profiles", admin::list_profiles)
        .add(Method::PUT, "/v1/admin/orgs/{org}/profiles/{name}", admin::put_profile)
        .add(Method::GET, "/v1/admin/orgs/{org}/profiles/{name}", admin::get_profile)
        .add(Method::DELETE, "/v1/admin/orgs/{org}/profiles/{name}", admin::delete_profile)
        .add(Method::POST, "/v1/admin/orgs/{org}/sync-now", admin::sync_now)
        .add(Method::PUT, "/v1/admin/orgs/{org}/location", admin::put_location)
        .add(Method::DELETE, "/v1/admin/orgs/{org}/location", admin::delete_location)
        .add(Method::GET, "/v1/admin/queues", admin::queues)
        .add(Method::GET, "/v1/admin/queues/{queue}/dead-letters", admin::dead_letters)
}

/// An org id from a path segment; a malformed one is a 400 saying why.
fn org_from_path(text: &str) -> Result<OrgId, Error> {
    OrgId::new(text).map_err(|e| match e {
        Error::InvalidInput { message, .. } => {
            Error::invalid(format!("the org in the path is not a valid org id: {message}"))
        }
        other => other,
    })
}
