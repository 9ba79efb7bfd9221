//! The middleware around every route: request timeouts (extendable by a
//! live pull) and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sync_core::Error;
use tokio::time::Instant;

use super::AppState;
use crate::api_error::ApiError;

/// The request's deadline, which a handler may push back (a live pull adds
/// its wait). Put into every request's extensions by the middleware.
#[derive(Clone, Debug, Default)]
pub(crate) struct Deadline {
    extra_ms: Arc<AtomicU64>,
}

impl Deadline {
    /// Gives the request `by` more than the configured timeout.
    pub(crate) fn extend(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.extra_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn extra(&self) -> Duration {
        Duration::from_millis(self.extra_ms.load(Ordering::Relaxed))
    }
}

/// The label of requests that matched no route (a fixed label, so unknown
/// paths cannot blow up the metrics' cardinality).
const UNMATCHED: &str = "unmatched";

/// Times the request out as a problem response, and counts it.
pub(crate) async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let deadline = Deadline::default();
    request.extensions_mut().insert(deadline.clone());
    let timeout = state.config().request_timeout;
    let response = {
        let run = next.run(request);
        tokio::pin!(run);
        let mut until = start + timeout;
        loop {
            tokio::select! {
                response = &mut run => break response,
                () = tokio::time::sleep_until(until) => {
                    let extended = start + timeout.saturating_add(deadline.extra());
                    if extended > until {
                        until = extended;
                        continue;
                    }
                    let waited = until - start;
                    break ApiError::new(Error::unavailable(format!(
                        "the request did not complete within {} ms; try again",
                        waited.as_millis()
                    )))
                    .into_response();
                }
            }
        }
    };
    if let Some(metrics) = state.metrics() {
        let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        metrics.observe(route, method.as_str(), response.status().as_u16(), start.elapsed().as_secs_f64());
    }
    response
}
