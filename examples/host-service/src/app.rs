//! The host application's router: its own routes, and the sync router
//! mounted under `/sync`.

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::routing::get;
use axum::{Json, Router};
use sync_core::Authenticator;
use transport_http::Authenticated;

/// Where the sync router is mounted: devices use
/// `{base}/sync/v1/orgs/{org}/sync/…`, so their base URL is `{base}/sync`.
pub const SYNC_PREFIX: &str = "/sync";

/// What the host's own handlers share.
#[derive(Clone)]
pub struct HostState {
    /// The host's authentication, shared with the sync router.
    pub auth: Arc<dyn Authenticator>,
    /// The application's name, shown on its home page.
    pub name: String,
}

// Lets `transport_http::Authenticated` authenticate the host's own routes
// with the same scheme as the sync endpoints.
impl FromRef<HostState> for Arc<dyn Authenticator> {
    fn from_ref(state: &HostState) -> Self {
        state.auth.clone()
    }
}

async fn home(State(state): State<HostState>) -> String {
    format!(
        "{}\n\nGET  /api/hello                          who am I (Authorization: Bearer <API key>)\n\
         POST {SYNC_PREFIX}/v1/orgs/{{org}}/sync/pull      offline sync (same API key)\n\
         GET  {SYNC_PREFIX}/healthz, {SYNC_PREFIX}/readyz   sync health\n",
        state.name
    )
}

async fn hello(Authenticated(principal): Authenticated) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "hello": principal.user_id,
        "org": principal.org,
        "roles": principal.roles,
    }))
}

/// The host's router: `GET /`, `GET /api/hello` (API key required), and
/// `sync` — the router of [`transport_http::router`] — under
/// [`SYNC_PREFIX`]. Unknown paths outside `/sync` get axum's plain 404; the
/// sync router answers its own with problem+json.
pub fn host_router(state: HostState, sync: Router) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/api/hello", get(hello))
        .with_state(state)
        .nest(SYNC_PREFIX, sync)
}
