//! Operational endpoints (`/healthz`, `/readyz`, `/metrics`, the OpenAPI
//! document) and the answers for unknown routes and methods.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;
use sync_core::Error;
use sync_core::org::{DATASYNC_QUEUE, PROVISIONING_QUEUE};
use sync_core::{QueueName, Result};

use super::AppState;
use crate::api_error::ApiError;
use crate::config::MetricsAccess;

/// How long a readiness probe waits for the store or the queue.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /healthz`: the process is up and serving.
pub(super) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the store and the queue answer a ping.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let service = state.service();
    let timeout = READY_TIMEOUT.min(state.config().request_timeout);
    let probe = |what: &'static str, result: Result<Result<()>, tokio::time::error::Elapsed>| match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the {what} is not reachable: {e}")),
        Err(_) => Err(format!("the {what} did not answer within {} ms", timeout.as_millis())),
    };
    let store = probe("store", tokio::time::timeout(timeout, service.store().ping()).await);
    let queue = probe("queue", tokio::time::timeout(timeout, service.queue().ping()).await);
    match (store, queue) {
        (Ok(()), Ok(())) => Json(json!({"status": "ready", "store": "ok", "queue": "ok"})).into_response(),
        (store, queue) => {
            let reasons: Vec<String> = [store.err(), queue.err()].into_iter().flatten().collect();
            ApiError::new(Error::unavailable(reasons.join("; "))).into_response()
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition, with the queues' depths
/// read now.
pub(super) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    match state.metrics_access() {
        MetricsAccess::Public => {}
        MetricsAccess::Off => return Err(ApiError::new(Error::not_found("route GET /metrics"))),
        MetricsAccess::Role(role) => {
            let principal = state.authenticate(&headers).await?;
            if !principal.roles.contains(role) {
                return Err(ApiError::new(Error::forbidden(format!(
                    "reading /metrics needs the role '{role}'"
                ))));
            }
        }
    }
    let Some(metrics) = state.metrics() else {
        return Err(ApiError::new(Error::internal("the metrics registry could not be built")));
    };
    for name in [PROVISIONING_QUEUE, DATASYNC_QUEUE] {
        let queue = QueueName::new(name)?;
        match state.service().queue().depth(&queue).await {
            Ok(depth) => metrics.set_queue_depth(name, &depth),
            // Metrics stay available when the queue is not: the gauges keep
            // their last values and readiness reports the outage.
            Err(e) => tracing::warn!(queue = name, error = %e, "queue depth unavailable for metrics"),
        }
    }
    let body = metrics.render()?;
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::TEXT_FORMAT));
    Ok(response)
}

/// `GET /v1/openapi.json`.
pub(super) async fn openapi(State(state): State<AppState>) -> Response {
    let mut response = state.shared.openapi.clone().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Any path no route matches: 404 as a problem.
pub(super) async fn unknown_route(request: Request) -> Response {
    ApiError::new(Error::not_found(format!(
        "route {} {}; see /v1/openapi.json for the routes",
        request.method(),
        request.uri().path()
    )))
    .into_response()
}

/// A known path with a method it does not take: 405 as a problem.
pub(super) async fn method_not_allowed(request: Request) -> Response {
    ApiError::with_status(
        Error::invalid(format!("{} is not allowed on {}", request.method(), request.uri().path())),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .into_response()
}
